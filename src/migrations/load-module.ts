import { createRequire, Module } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import vm from 'node:vm';
import { ensureTypeScriptFor } from '../config/typescript-loader.ts';

/** The parameters of Node's CommonJS module wrapper, in its order. */
const WRAPPER_PARAMETERS = ['exports', 'require', 'module', '__filename', '__dirname'];

/**
 * Evaluates a JavaScript or TypeScript migration file and returns what it exports: its module
 * namespace, or a CommonJS `module.exports`.
 *
 * A `.js` or `.cjs` file is judged by its source, not by the nearest package.json: when it
 * compiles as the body of Node's CommonJS wrapper (it has no `import`/`export` statement, no
 * `import.meta`, no top-level `await`) it runs as CommonJS, with `exports`, `module`, `require`
 * (resolving from the file), `__filename` and `__dirname` as Node gives them. This is the test
 * Node itself applies to files without a "type", extended to files under `"type": "module"`,
 * where Node refuses `exports.up = …` ("exports is not defined in ES module scope") though that is
 * how most Knex migrations are written, and renaming them is no answer: Knex records the file
 * name. Everything else (ESM `.js`/`.mjs`, `.ts`/`.mts`/`.cts`) goes through `import()`. Only the
 * migration file is treated so: a CommonJS helper that it requires from a `"type": "module"`
 * folder is loaded by Node's rules.
 */
export async function evaluateModule(file: string, source: string, version: string): Promise<unknown> {
  const absolute = path.resolve(file);
  const body = /\.c?js$/.test(absolute) ? compileCommonJs(absolute, source) : undefined;
  if (body) return runCommonJs(absolute, body);
  await ensureTypeScriptFor(absolute);
  // The version in the URL makes an edited file load afresh in a long-lived process.
  return import(`${pathToFileURL(absolute).href}?v=${version}`);
}

type WrapperBody = (...args: unknown[]) => unknown;

/**
 * The SyntaxErrors of compiling a file as CommonJS that mean "this is an ES module": the list
 * Node's own module-syntax detection (`--experimental-detect-module`) uses.
 */
const ESM_ONLY_SYNTAX = new Set([
  'Cannot use import statement outside a module',
  "Unexpected token 'export'",
  "Cannot use 'import.meta' outside a module",
  "Identifier 'module' has already been declared",
  "Identifier 'exports' has already been declared",
  "Identifier 'require' has already been declared",
  "Identifier '__filename' has already been declared",
  "Identifier '__dirname' has already been declared",
  'await is only valid in async functions and the top level bodies of modules',
]);

/**
 * The file compiled as a CommonJS module body, or undefined when it is an ES module. Any other
 * SyntaxError is thrown as it is: V8 puts `file:line` on its first stack line, which Node 20
 * leaves off the same error from `import()`.
 */
function compileCommonJs(file: string, source: string): WrapperBody | undefined {
  try {
    // As Node's loader does: no byte-order mark, and a `#!` line is no syntax error (kept as a comment, so lines keep their numbers).
    return vm.compileFunction(source.replace(/^\uFEFF/, '').replace(/^#!/, '//'), WRAPPER_PARAMETERS, {
      filename: file,
      // `import()` inside the file resolves as it would in a module Node loaded.
      importModuleDynamically: vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
    }) as WrapperBody;
  } catch (error) {
    const esm = (error as Error | null)?.name === 'SyntaxError' && ESM_ONLY_SYNTAX.has((error as Error).message);
    if (esm && !file.endsWith('.cjs')) return undefined;
    throw error;
  }
}

function runCommonJs(file: string, body: WrapperBody): unknown {
  const require = createRequire(file);
  const module = new Module(file);
  module.filename = file;
  module.paths = require.resolve.paths('knex') ?? [];
  body.call(module.exports, module.exports, require, module, file, path.dirname(file));
  module.loaded = true;
  return module.exports;
}

/**
 * One line saying what is wrong with a file that failed to load, and where when known:
 * esbuild (TypeScript through tsx) puts `file:line:col: ERROR: …` after a header line; V8
 * puts the location of a SyntaxError on the first line of its stack.
 */
export function loadErrorReason(error: unknown, file: string): string {
  const message = (error as { message?: unknown } | null)?.message;
  const text = typeof message === 'string' ? message : String(error);
  const located = text.split('\n').find((line) => /:\d+:\d+: ERROR: /.test(line));
  if (located) return located.replace(/^.*[\\/]/, '').trim();
  const first = text.split('\n')[0] ?? text;
  if ((error as Error | null)?.name !== 'SyntaxError') return first;
  const name = path.basename(file);
  const stackTop = (error as Error).stack?.split('\n')[0] ?? '';
  const at = stackTop.lastIndexOf(`${name}:`);
  const line = at === -1 ? undefined : /^:(\d+)/.exec(stackTop.slice(at + name.length))?.[1];
  return `${line ? `${name}:${line}: ` : ''}SyntaxError: ${first}`;
}
