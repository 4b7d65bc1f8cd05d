import path from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

// The package's public surface, read the way a user's editor reads it: every export of
// src/index.ts (and of the light `tenant-migrate/config` entry) documented, and every type it
// mentions importable by name (none is a forgotten internal the user cannot name).
const ROOT = path.resolve(import.meta.dirname, '..', '..');
const ENTRIES = ['src/index.ts', 'src/config/define.ts'].map((file) => path.join(ROOT, file));

const program = ts.createProgram(ENTRIES, {
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  allowImportingTsExtensions: true,
  noEmit: true,
  strict: true,
  skipLibCheck: true,
});
const checker = program.getTypeChecker();

function exportsOf(file: string): ts.Symbol[] {
  const source = program.getSourceFile(file);
  const module = source && checker.getSymbolAtLocation(source);
  if (!module) throw new Error(`cannot read ${file}`);
  return checker.getExportsOfModule(module);
}

const resolved = (symbol: ts.Symbol): ts.Symbol =>
  symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol;

describe('the public API', () => {
  for (const entry of ENTRIES) {
    const name = path.relative(ROOT, entry);
    it(`${name}: every export has a doc comment`, () => {
      const exports = exportsOf(entry);
      expect(exports.length).toBeGreaterThan(0);
      const undocumented = exports
        .filter((symbol) => ts.displayPartsToString(resolved(symbol).getDocumentationComment(checker)).trim() === '')
        .map((symbol) => symbol.name);
      expect(undocumented).toEqual([]);
    });

    it(`${name}: every type its exports mention is exported too`, () => {
      const exported = new Set(exportsOf(entry).map(resolved));
      const forgotten = new Map<string, Set<string>>();
      for (const symbol of exported) {
        for (const declaration of symbol.declarations ?? []) {
          const visit = (node: ts.Node): void => {
            if (ts.isBlock(node)) return; // bodies are not the surface
            if (isHidden(node)) return; // private members, and `@internal` ones (dropped from the .d.ts)
            const reference = referenceName(node);
            if (reference) {
              const target = checker.getSymbolAtLocation(reference);
              const found = target && resolved(target);
              const file = found?.declarations?.[0]?.getSourceFile().fileName ?? '';
              const ours = file.startsWith(path.join(ROOT, 'src'));
              if (found && ours && !(found.flags & ts.SymbolFlags.TypeParameter) && !exported.has(found)) {
                const key = `${found.name} (${path.relative(ROOT, file)})`;
                forgotten.set(key, (forgotten.get(key) ?? new Set()).add(symbol.name));
              }
            }
            ts.forEachChild(node, visit);
          };
          visit(declaration);
        }
      }
      const list = [...forgotten].map(([type, users]) => `${type} used by ${[...users].join(', ')}`);
      expect(list).toEqual([]);
    });
  }
});

function isHidden(node: ts.Node): boolean {
  if (ts.getJSDocTags(node).some((tag) => tag.tagName.text === 'internal')) return true;
  if (!ts.isPropertyDeclaration(node) && !ts.isMethodDeclaration(node)) return false;
  const modifiers = ts.getModifiers(node) ?? [];
  return (
    modifiers.some((m) => m.kind === ts.SyntaxKind.PrivateKeyword || m.kind === ts.SyntaxKind.ProtectedKeyword) ||
    (node.name !== undefined && ts.isPrivateIdentifier(node.name))
  );
}

function referenceName(node: ts.Node): ts.Node | undefined {
  if (ts.isTypeReferenceNode(node)) return node.typeName;
  if (ts.isTypeQueryNode(node)) return node.exprName;
  if (ts.isExpressionWithTypeArguments(node)) return node.expression;
  return undefined;
}
