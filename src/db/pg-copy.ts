import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ConnectionTarget } from '../config/config.ts';
import { ToolkitError } from '../errors.ts';
import {
  choosePgDump,
  findPgDumps,
  isExecutable,
  libpqEnvironment,
  type PgDumpTool,
  PgDumpUnavailableError,
} from './pg-dump.ts';

/**
 * The real `pg_dump --format=custom` and `pg_restore` of one schema, for `tenant:move`: the pair
 * is found as `tenant:drop --dump` finds pg_dump (src/db/pg-dump.ts: PATH first, then
 * `/usr/lib/postgresql/<major>/bin`, at least as new as the servers), pg_restore being the one
 * beside the chosen pg_dump. Connections go through libpq's environment (never a password on the
 * command line), and a child still running when this process exits is killed with it, so that
 * a crashed move never leaves a pg_restore writing behind it.
 */

/** pg_dump or pg_restore ran and failed (the first error line it printed). */
export class PgCopyFailedError extends ToolkitError {
  constructor(message: string) {
    super('E_PG_COPY_FAILED', message);
  }
}

/** A server to dump from or restore into (the embedded engine cannot be either). */
export type ServerTarget = ConnectionTarget & { kind: 'server' };

/** The pg_dump and pg_restore of one PostgreSQL installation. */
export interface PgCopyTools {
  readonly pgDump: PgDumpTool;
  readonly pgRestore: string;
}

/** `application_name` of the tools' sessions, so that a move can tell another move's dump from an application. */
export const COPY_APPLICATION_NAME = 'tenant-migrate:move';

/**
 * The pg_dump to use against servers of `serverMajor` (the newer of source and target) and the
 * pg_restore beside it. Throws PgDumpUnavailableError saying what is missing.
 */
export async function findCopyTools(serverMajor: number, env: NodeJS.ProcessEnv = process.env): Promise<PgCopyTools> {
  const pgDump = choosePgDump(await findPgDumps(env), serverMajor);
  const pgRestore = path.join(path.dirname(pgDump.path), 'pg_restore');
  if (!isExecutable(pgRestore)) {
    throw new PgDumpUnavailableError(
      `pg_restore is not installed beside ${pgDump.path}: install the PostgreSQL ${pgDump.major} client tools`,
    );
  }
  return { pgDump, pgRestore };
}

/** Dumps `schema` (its objects and data, not the schema itself) into `file` in pg_dump's custom format. */
export async function dumpSchemaCustom(options: {
  readonly tools: PgCopyTools;
  readonly target: ServerTarget;
  readonly schema: string;
  readonly file: string;
  /** pg_dump's `--lock-wait-timeout` in ms (0: wait). */
  readonly lockTimeoutMs: number;
}): Promise<{ readonly bytes: number }> {
  const args = ['--schema', options.schema, '--format=custom', '--file', options.file, '--no-password'];
  if (options.lockTimeoutMs > 0) args.push(`--lock-wait-timeout=${options.lockTimeoutMs}`);
  await withLibpq(options.target, (env) => runTool(options.tools.pgDump.path, args, env));
  return { bytes: statSync(options.file).size };
}

/**
 * Restores the objects of `schema` from a custom dump into the target's existing schema of that
 * name, in ONE transaction (`--single-transaction`: a failure leaves nothing restored), owned by
 * the connecting role (`--no-owner`). `skipTriggers` names triggers left out (the registry's
 * tracking trigger, whose function exists on the main server only).
 */
export async function restoreSchema(options: {
  readonly tools: PgCopyTools;
  readonly target: ServerTarget;
  readonly schema: string;
  readonly file: string;
  readonly skipTriggers: readonly string[];
}): Promise<void> {
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'pg-restore-'));
  try {
    const toc = await runTool(options.tools.pgRestore, ['--list', options.file], process.env);
    const list = path.join(scratch, 'toc.list');
    writeFileSync(list, withoutTriggers(toc, options.schema, options.skipTriggers), { mode: 0o600 });
    const args = [
      '--schema',
      options.schema,
      '--use-list',
      list,
      '--no-owner',
      '--single-transaction',
      '--no-password',
    ];
    await withLibpq(options.target, (env) => {
      // Without --dbname pg_restore would print SQL instead of restoring; libpq's own default
      // database is the user's name. Only the name here: host, user and password come from PG*.
      const database = env.PGDATABASE ?? env.PGUSER ?? os.userInfo().username;
      return runTool(options.tools.pgRestore, [...args, '--dbname', database, options.file], env);
    });
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

/**
 * pg_restore's table of contents with the named triggers of `schema` commented out (`;`): an
 * entry line reads `<id>; <oid> <oid> TRIGGER <schema> <table> <trigger> <owner>`. Pure.
 */
export function withoutTriggers(toc: string, schema: string, triggers: readonly string[]): string {
  return toc
    .split('\n')
    .map((line) => {
      const match = /^\d+; \d+ \d+ TRIGGER (\S+) \S+ (\S+) /.exec(line);
      return match && match[1] === schema && triggers.includes(match[2]!) ? `;${line}` : line;
    })
    .join('\n');
}

/** Runs a tool to completion: its stdout, or PgCopyFailedError with its first error line. */
function runTool(file: string, args: readonly string[], env: NodeJS.ProcessEnv): Promise<string> {
  const tool = path.basename(file);
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const killOnExit = (): void => kill(child);
    process.once('exit', killOnExit);
    let out = '';
    let errors = '';
    child.stdout.on('data', (chunk) => (out += chunk));
    child.stderr.on('data', (chunk) => (errors += chunk));
    child.on('error', (error) => {
      process.off('exit', killOnExit);
      reject(new PgCopyFailedError(`${tool} could not start: ${error.message}`));
    });
    child.on('close', (code, signal) => {
      process.off('exit', killOnExit);
      if (code === 0) return resolve(out);
      const lines = errors.trim().split('\n');
      const why = lines.find((l) => l.includes('error:')) ?? lines[0] ?? '';
      reject(new PgCopyFailedError(`${tool} failed (${signal ?? `exit ${code}`}): ${why.trim() || 'no message'}`));
    });
  });
}

function kill(child: ChildProcess): void {
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
}

/** Runs `cb` with libpq's environment for `target`; a CA certificate goes to a private file removed after. */
async function withLibpq<T>(target: ServerTarget, cb: (env: NodeJS.ProcessEnv) => Promise<T>): Promise<T> {
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'pg-copy-'));
  try {
    return await cb({ ...process.env, ...libpqEnvironment(target, scratch), PGAPPNAME: COPY_APPLICATION_NAME });
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}
