import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Knex } from 'knex';
import { UsageError } from '../errors.ts';
import { evaluateModule, loadErrorReason } from '../migrations/load-module.ts';
import { SqlFileError, splitStatements } from '../migrations/sql-file.ts';
import { runBatch } from '../migrations/sql-migration.ts';

/**
 * What `tenants:run` runs in each tenant: a SQL file (its statements, one at a time, on the
 * tenant's connection or transaction) or a module's `run(knex, tenant)`. Loaded once, before any
 * tenant is touched, so that a syntax error or a missing export is refused up front (exit 2).
 */

/** What a module's `run` is given besides the Knex (a transaction, or a connection with --no-transaction). */
export interface RunTenant {
  readonly orgId: string;
  readonly schema: string;
  readonly status: string;
  readonly labels: readonly string[];
  /** A dry-run: whatever `run` does is rolled back afterwards. */
  readonly dryRun: boolean;
}

/** A module's export: its return value becomes the tenant's result rows. */
export type RunFunction = (knex: Knex, tenant: RunTenant) => unknown;

/** A row of a tenant's result, JSON-safe (bigint and binary as strings, dates as ISO text). */
export type ResultRow = Readonly<Record<string, unknown>>;

/** What one tenant's execution returned: `rows` is null when nothing returned rows. */
export interface TaskResult {
  readonly rows: readonly ResultRow[] | null;
  /** Statements executed (SQL files), or 1 for a module. */
  readonly statements: number;
}

/** A `tenants:run` file, loaded once before any tenant: SQL statements or a module's `run`. */
export interface RunTask {
  readonly kind: 'sql' | 'module';
  /** The file as given, made absolute. */
  readonly file: string;
  /** Its base name, as the ledger and the reports show it. */
  readonly name: string;
  /** md5 of the file's content: the ledger records which version ran. */
  readonly digest: string;
  execute(conn: Knex, tenant: RunTenant): Promise<TaskResult>;
}

const MODULE = /\.(?:[cm]?[jt]s)$/;

/** Reads and checks the file: `.sql`, or a module (`.ts`, `.js`, `.mjs`, `.cjs`, `.mts`, `.cts`) exporting `run`. */
export async function loadTask(file: string): Promise<RunTask> {
  const absolute = path.resolve(file);
  const name = path.basename(absolute);
  let content: string;
  try {
    content = await readFile(absolute, 'utf8');
  } catch (error) {
    throw new UsageError(`Cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, {
      code: 'E_RUN_FILE',
    });
  }
  const digest = createHash('md5').update(content).digest('hex');
  if (absolute.endsWith('.sql')) return sqlTask(absolute, name, digest, content);
  if (MODULE.test(absolute)) return moduleTask(absolute, name, digest, content);
  throw new UsageError(`${name}: tenants:run takes a .sql file or a module (.ts, .js, .mjs, .cjs)`, {
    code: 'E_RUN_FILE',
  });
}

async function sqlTask(file: string, name: string, digest: string, content: string): Promise<RunTask> {
  let statements: { text: string; line: number }[];
  try {
    statements = await splitStatements({ text: content, line: 1, transaction: true });
  } catch (error) {
    if (error instanceof SqlFileError) throw new UsageError(`${name}: ${error.message}`, { code: 'E_RUN_FILE' });
    throw error;
  }
  if (statements.length === 0) throw new UsageError(`${name} has no SQL statement`, { code: 'E_RUN_FILE' });
  return {
    kind: 'sql',
    file,
    name,
    digest,
    // One statement per query, so that each one's rows are known and a failure names its line.
    execute: async (conn) => {
      let rows: ResultRow[] | null = null;
      for (const statement of statements) {
        const result = (await runBatch(conn, { ...statement, whole: false })) as DriverResult;
        if (Array.isArray(result?.fields) && result.fields.length > 0) rows = result.rows.map(toRow);
      }
      return { rows, statements: statements.length };
    },
  };
}

async function moduleTask(file: string, name: string, digest: string, content: string): Promise<RunTask> {
  let loaded: unknown;
  try {
    loaded = await evaluateModule(file, content, digest.slice(0, 12));
  } catch (error) {
    throw new UsageError(`Cannot load ${name}: ${loadErrorReason(error, file)}`, { code: 'E_RUN_FILE' });
  }
  const run = runExport(loaded);
  if (!run) throw new UsageError(`${name} exports no run(knex, tenant) function`, { code: 'E_RUN_FILE' });
  return {
    kind: 'module',
    file,
    name,
    digest,
    execute: async (conn, tenant) => ({ rows: rowsOf(await run(conn, tenant)), statements: 1 }),
  };
}

/** `export function run`, `exports.run`, or a default export that is the function or holds it. */
function runExport(loaded: unknown): RunFunction | undefined {
  const mod = loaded as { run?: unknown; default?: unknown } | null;
  if (typeof mod?.run === 'function') return mod.run as RunFunction;
  const fallback = mod?.default as { run?: unknown } | undefined;
  if (typeof fallback === 'function') return fallback as RunFunction;
  if (typeof fallback?.run === 'function') return fallback.run as RunFunction;
  return undefined;
}

/** What node-postgres returns for one statement. */
interface DriverResult {
  readonly rows: unknown[];
  readonly fields?: unknown[];
  readonly command?: string;
}

/**
 * A module's return value as rows: an array is the rows (an element that is not an object becomes
 * `{ result }`), a driver result (`return knex.raw(…)`) its rows, `undefined` no rows, anything
 * else (an object too) one row `{ result }`.
 */
export function rowsOf(value: unknown): ResultRow[] | null {
  if (value === undefined) return null;
  if (Array.isArray(value)) return value.map(toRow);
  const result = value as Partial<DriverResult> | null;
  if (result && Array.isArray(result.rows) && typeof result.command === 'string') return result.rows.map(toRow);
  return [{ result: jsonSafe(value) }];
}

function toRow(value: unknown): ResultRow {
  const safe = jsonSafe(value);
  return safe !== null && typeof safe === 'object' && !Array.isArray(safe) ? (safe as ResultRow) : { result: safe };
}

/**
 * A value JSON can carry as it is: bigint and non-finite numbers as strings, binary as
 * PostgreSQL's `\x…` text, dates as ISO text, objects with `toJSON` by it, and no `undefined`.
 */
export function jsonSafe(value: unknown, depth = 0): unknown {
  if (value === undefined || typeof value === 'function' || typeof value === 'symbol') return null;
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'number') return Number.isFinite(value) ? value : String(value);
  if (value === null || typeof value !== 'object') return value;
  if (depth > 32) return '[too deep]';
  if (Buffer.isBuffer(value)) return `\\x${value.toString('hex')}`;
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? null : value.toISOString();
  if (Array.isArray(value)) return value.map((v) => jsonSafe(v, depth + 1));
  const withJson = value as { toJSON?: () => unknown };
  if (typeof withJson.toJSON === 'function') return jsonSafe(withJson.toJSON(), depth + 1);
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, jsonSafe(v, depth + 1)]));
}
