import { execFile, spawn } from 'node:child_process';
import {
  accessSync,
  constants,
  existsSync,
  mkdtempSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { ConnectionTarget } from '../config/config.ts';
import { ToolkitError, UsageError } from '../errors.ts';

/**
 * The real `pg_dump` of one schema, for `tenant:drop --dump`: found on PATH or under
 * `/usr/lib/postgresql/<major>/bin`, the newest one that can dump the server (pg_dump refuses a
 * server newer than itself), run with the toolkit's connection passed in the environment (never
 * a password on the command line), written to a temporary file beside the target and renamed
 * into place only once pg_dump succeeded: a failed dump leaves no file.
 */

/** pg_dump is needed but cannot be used here (absent, too old, or the embedded engine). */
export class PgDumpUnavailableError extends ToolkitError {
  constructor(message: string) {
    super('E_PG_DUMP_UNAVAILABLE', message);
  }
}

/** pg_dump ran and failed. */
export class PgDumpFailedError extends ToolkitError {
  constructor(message: string) {
    super('E_PG_DUMP_FAILED', message);
  }
}

export interface PgDumpTool {
  readonly path: string;
  /** Its major version (e.g. 15). */
  readonly major: number;
}

/** The file `pg_dump` wrote before a drop, and its size. */
export interface DumpResult {
  readonly file: string;
  readonly bytes: number;
  readonly pgDump: string;
}

const run = promisify(execFile);
const DEBIAN_ROOT = '/usr/lib/postgresql';

/** Every pg_dump found: PATH first, then `/usr/lib/postgresql/*\/bin`, each with its major version. */
export async function findPgDumps(env: NodeJS.ProcessEnv = process.env): Promise<PgDumpTool[]> {
  const candidates = new Set<string>();
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (dir !== '' && isExecutable(path.join(dir, 'pg_dump'))) candidates.add(path.join(dir, 'pg_dump'));
  }
  if (existsSync(DEBIAN_ROOT)) {
    for (const version of readdirSync(DEBIAN_ROOT)) {
      const file = path.join(DEBIAN_ROOT, version, 'bin', 'pg_dump');
      if (isExecutable(file)) candidates.add(file);
    }
  }
  const tools: PgDumpTool[] = [];
  for (const file of candidates) {
    try {
      const { stdout } = await run(file, ['--version'], { timeout: 10_000 });
      const match = /(\d+)(?:\.\d+)?/.exec(stdout);
      if (match) tools.push({ path: file, major: Number(match[1]) });
    } catch {
      // Not a working pg_dump (a broken wrapper, no cluster for it): not a candidate.
    }
  }
  return tools;
}

/**
 * The pg_dump to use against a server of `serverMajor`: the first found on PATH that is new
 * enough, else the newest new-enough one under /usr/lib/postgresql. Throws PgDumpUnavailableError
 * saying what is missing.
 */
export function choosePgDump(tools: readonly PgDumpTool[], serverMajor: number): PgDumpTool {
  const usable = tools.filter((t) => t.major >= serverMajor);
  const onPath = usable.find((t) => !t.path.startsWith(`${DEBIAN_ROOT}/`));
  const chosen = onPath ?? [...usable].sort((a, b) => b.major - a.major)[0];
  if (chosen) return chosen;
  if (tools.length === 0) {
    throw new PgDumpUnavailableError(
      `pg_dump is not installed (not on PATH, nor under ${DEBIAN_ROOT}/*/bin): install the PostgreSQL ${serverMajor} client tools, or drop without --dump`,
    );
  }
  const found = tools.map((t) => `${t.path} (${t.major})`).join(', ');
  throw new PgDumpUnavailableError(
    `pg_dump is older than the server (PostgreSQL ${serverMajor}): found ${found}; install pg_dump ${serverMajor} or newer`,
  );
}

/** Checks that `file` can be created (its folder exists, nothing is there yet), before anything is locked. */
export function checkDumpTarget(file: string): string {
  const target = path.resolve(file);
  if (existsSync(target)) throw new UsageError(`--dump: ${target} already exists (refusing to overwrite a dump)`);
  const dir = path.dirname(target);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new UsageError(`--dump: no folder ${dir}`);
  try {
    accessSync(dir, constants.W_OK);
  } catch {
    throw new UsageError(`--dump: cannot write to ${dir}`);
  }
  return target;
}

/**
 * Connection settings for libpq (`PGHOST`, …) from the toolkit's target; the CA is written to a
 * private file in `scratch`. Also used by `tenant:move`'s pg_dump/pg_restore (pg-copy.ts).
 */
export function libpqEnvironment(target: ConnectionTarget & { kind: 'server' }, scratch: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { PGHOST: target.host, PGPORT: String(target.port) };
  let user = target.user;
  let password = target.password;
  let database = target.database;
  let sslmode: string | undefined;
  if (target.connectionString) {
    const url = new URL(target.connectionString);
    user ??= url.username ? decodeURIComponent(url.username) : undefined;
    password ??= url.password ? decodeURIComponent(url.password) : undefined;
    database ??= url.pathname.length > 1 ? decodeURIComponent(url.pathname.slice(1)) : undefined;
    sslmode = url.searchParams.get('sslmode') ?? undefined;
  }
  if (user !== undefined) env.PGUSER = user;
  if (password !== undefined) env.PGPASSWORD = password;
  if (database !== undefined) env.PGDATABASE = database;
  if (target.ssl !== false) {
    if (target.ssl.ca !== undefined) {
      const ca = path.join(scratch, 'root.crt');
      writeFileSync(ca, target.ssl.ca, { mode: 0o600 });
      env.PGSSLROOTCERT = ca;
    } else if (target.ssl.rejectUnauthorized) env.PGSSLROOTCERT = 'system';
    env.PGSSLMODE = target.ssl.rejectUnauthorized ? 'verify-full' : 'require';
  } else if (sslmode !== undefined) env.PGSSLMODE = sslmode;
  return env;
}

/**
 * Runs `pg_dump --schema <schema>` (plain SQL, with its CREATE SCHEMA) into `file`, which must not
 * exist yet. The caller holds the tenant's lock in an open transaction; pg_dump takes only
 * ACCESS SHARE locks on the schema's tables, which that transaction has not touched.
 */
export async function dumpSchema(options: {
  readonly tool: PgDumpTool;
  readonly target: ConnectionTarget & { kind: 'server' };
  readonly schema: string;
  readonly file: string;
  /** pg_dump's `--lock-wait-timeout` in ms (0: wait). */
  readonly lockTimeoutMs: number;
}): Promise<DumpResult> {
  const file = path.resolve(options.file);
  const partial = `${file}.partial-${process.pid}`;
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'pg-dump-'));
  try {
    const args = ['--schema', options.schema, '--file', partial, '--no-password'];
    if (options.lockTimeoutMs > 0) args.push(`--lock-wait-timeout=${options.lockTimeoutMs}`);
    const env = { ...process.env, ...libpqEnvironment(options.target, scratch) };
    await new Promise<void>((resolve, reject) => {
      const child = spawn(options.tool.path, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
      let errors = '';
      child.stderr.on('data', (chunk) => (errors += chunk));
      child.on('error', reject);
      child.on('close', (code, signal) => {
        if (code === 0) resolve();
        else {
          const why = errors.trim().split('\n')[0] ?? '';
          reject(new PgDumpFailedError(`pg_dump failed (${signal ?? `exit ${code}`}): ${why || 'no message'}`));
        }
      });
    });
    if (existsSync(file)) throw new UsageError(`--dump: ${file} appeared while dumping (refusing to overwrite it)`);
    renameSync(partial, file);
    return { file, bytes: statSync(file).size, pgDump: options.tool.path };
  } finally {
    rmSync(partial, { force: true });
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** A regular file this process may execute. */
export function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

/**
 * Everything a dump needs, checked before anything is locked: a server (the embedded engine
 * cannot be dumped: pg_dump speaks to a real server), a free target file, and a pg_dump at
 * least as new as the server.
 */
export async function prepareDump(
  knex: { raw(sql: string): PromiseLike<{ rows: { v?: string }[] }> },
  target: ConnectionTarget,
  file: string,
  lockTimeoutMs: number,
): Promise<{
  file: string;
  tool: PgDumpTool;
  target: ConnectionTarget & { kind: 'server' };
  lockTimeoutMs: number;
}> {
  if (target.kind === 'embedded') {
    throw new PgDumpUnavailableError(
      '--dump is not possible on the embedded engine (PGlite): pg_dump needs a PostgreSQL server; drop without --dump, or copy the data yourself first',
    );
  }
  const resolved = checkDumpTarget(file);
  const version = await knex.raw("select current_setting('server_version_num') as v");
  const serverMajor = Math.floor(Number(version.rows[0]?.v ?? 0) / 10_000);
  return { file: resolved, tool: choosePgDump(await findPgDumps(), serverMajor), target, lockTimeoutMs };
}
