import { parse } from 'libpg-query';

/**
 * SQL as PostgreSQL itself reads it: captured statements go through libpg-query (the server's own
 * parser compiled to WASM, PostgreSQL 17 grammar) and the rules look at the parse tree, never at
 * the text. This file holds the parsing and the few tree helpers the rules share.
 */

/** A parse-tree node as libpg-query returns it: `{ Tag: body }`, or a bare body for typed fields. */
export type TreeNode = Record<string, unknown>;

/** One top-level statement: its tag (`CreateStmt`, `IndexStmt`, …), its body, its own text and bindings. */
export interface ParsedStatement {
  readonly tag: string;
  readonly body: TreeNode;
  /** The statement's own slice of the SQL that was sent (one query may carry several statements). */
  readonly text: string;
  /** The values bound to `$1`, `$2`, … of the query this statement came from. */
  readonly bindings: readonly unknown[];
}

export type ParseOutcome =
  | { readonly ok: true; readonly statements: readonly ParsedStatement[] }
  | { readonly ok: false; readonly error: string };

interface RawStatement {
  stmt?: TreeNode;
  stmt_location?: number;
  stmt_len?: number;
}

/** Parses one query as sent to the server (Knex's `$n` placeholders parse as parameters). */
export async function parseSql(sql: string, bindings: readonly unknown[] = []): Promise<ParseOutcome> {
  let tree: { stmts?: RawStatement[] };
  try {
    tree = await parse(sql);
  } catch (error) {
    return { ok: false, error: (error as Error).message };
  }
  const statements: ParsedStatement[] = [];
  // Offsets are in bytes of UTF-8: slice the bytes, not the UTF-16 string.
  const bytes = Buffer.from(sql, 'utf8');
  for (const raw of tree.stmts ?? []) {
    const [tag, body] = Object.entries(raw.stmt ?? {})[0] ?? [];
    if (tag === undefined || !isObject(body)) continue;
    const start = raw.stmt_location ?? 0;
    const end = raw.stmt_len === undefined || raw.stmt_len === 0 ? bytes.length : start + raw.stmt_len;
    statements.push({ tag, body, text: bytes.subarray(start, end).toString('utf8').trim(), bindings });
  }
  return { ok: true, statements };
}

export function isObject(value: unknown): value is TreeNode {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Called for every node under a statement: `tag` is the wrapper key, or the field name for bare bodies. */
export type Visitor = (tag: string, body: TreeNode) => 'skip' | undefined;

/**
 * Visits every node of a tree depth first. Wrapped nodes (`{ RangeVar: {…} }`) are visited with
 * their tag; fields typed as one node kind (`relation`, `pktable`, …) hold a bare body and are
 * visited with the field name. Returning `'skip'` does not descend into that node.
 */
export function walk(tag: string, body: TreeNode, visit: Visitor): void {
  if (visit(tag, body) === 'skip') return;
  for (const [key, value] of Object.entries(body)) walkValue(key, value, visit);
}

function walkValue(key: string, value: unknown, visit: Visitor): void {
  if (Array.isArray(value)) {
    for (const item of value) walkValue(key, item, visit);
    return;
  }
  if (!isObject(value)) return;
  const keys = Object.keys(value);
  const only = keys.length === 1 ? keys[0] : undefined;
  // A wrapper has exactly one key and it is a node tag (PascalCase or A_Const-like).
  if (only !== undefined && /^[A-Z]/.test(only) && isObject(value[only])) walk(only, value[only], visit);
  else walk(key, value, visit);
}

/** The names of a list of `{ String: { sval } }` nodes, or undefined when it is not one. */
export function stringList(value: unknown): string[] | undefined {
  if (!Array.isArray(value) || value.length === 0) return undefined;
  const names: string[] = [];
  for (const item of value) {
    const sval = isObject(item) && isObject(item.String) ? item.String.sval : undefined;
    if (typeof sval !== 'string') return undefined;
    names.push(sval);
  }
  return names;
}

/**
 * The constant text an expression stands for: a string literal, a `$n` parameter (read from the
 * bindings), or either cast (`'x'::text`). Undefined for anything computed.
 */
export function constantText(node: unknown, bindings: readonly unknown[]): string | undefined {
  if (!isObject(node)) return undefined;
  if (isObject(node.A_Const) && isObject(node.A_Const.sval)) {
    const sval = node.A_Const.sval.sval;
    return typeof sval === 'string' ? sval : '';
  }
  if (isObject(node.ParamRef) && typeof node.ParamRef.number === 'number') {
    const bound = bindings[node.ParamRef.number - 1];
    return typeof bound === 'string' ? bound : undefined;
  }
  if (isObject(node.TypeCast)) return constantText(node.TypeCast.arg, bindings);
  return undefined;
}

/** A statement's text on one line, cut to `max` characters, for a finding. */
export function excerpt(text: string, max = 120): string {
  const line = text.replace(/\s+/g, ' ').trim();
  return line.length <= max ? line : `${line.slice(0, max - 1)}…`;
}
