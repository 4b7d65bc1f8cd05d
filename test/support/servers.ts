import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';

/*
 * The three PostgreSQL servers of the multi-server tests: the main one on 127.0.0.1:5432 and two
 * more on :5433 and :5434 (clusters `tm5433` and `tm5434` that `.ci/run` creates, trust auth).
 * Each test file gets a fresh database on each of them (`createDatabases`). Without the extra
 * servers the tests skip on a developer machine and fail under CI (`CI` set), as the Citus tests do.
 */

/** Admin URL (user postgres, database postgres) of the main server. */
export const MAIN_SERVER_URL = 'postgres://postgres@127.0.0.1:5432/postgres';
/** Admin URLs of the two extra servers, in port order. */
export const EXTRA_SERVER_URLS = [
  'postgres://postgres@127.0.0.1:5433/postgres',
  'postgres://postgres@127.0.0.1:5434/postgres',
] as const;

/**
 * A fourth server (cluster `tm5435`), used only by the test of a server going down mid-run, which
 * stops and starts it (`stopStoppableServer`, `startStoppableServer`): no other test is disturbed.
 */
export const STOPPABLE_SERVER_URL = 'postgres://postgres@127.0.0.1:5435/postgres';
const STOPPABLE_CLUSTER = 'tm5435';

function clusterVersion(): string {
  return readdirSync('/etc/postgresql').sort().at(-1) ?? '15';
}

/** Stops the cluster behind STOPPABLE_SERVER_URL at once (`-m fast`: sessions are cut, as in a crash of the service). */
export function stopStoppableServer(): void {
  execFileSync(
    'pg_ctlcluster',
    ['--skip-systemctl-redirect', clusterVersion(), STOPPABLE_CLUSTER, 'stop', '-m', 'fast'],
    {
      stdio: 'ignore',
    },
  );
}

/** Starts it again and waits until it answers. */
export async function startStoppableServer(): Promise<void> {
  execFileSync('pg_ctlcluster', ['--skip-systemctl-redirect', clusterVersion(), STOPPABLE_CLUSTER, 'start'], {
    stdio: 'ignore',
  });
  for (let i = 0; i < 60; i++) {
    if ((await probe(STOPPABLE_SERVER_URL)) === undefined) return;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  throw new Error(`${STOPPABLE_SERVER_URL} did not come back`);
}

/** Creates (or replaces) database `name` on one server; returns its URL and a drop. */
export async function createDatabaseOn(
  adminUrl: string,
  name: string,
): Promise<{ url: string; drop: () => Promise<void> }> {
  await withAdmin(adminUrl, async (client) => {
    await client.query(`drop database if exists "${name}" with (force)`);
    await client.query(`create database "${name}"`);
  });
  return {
    url: databaseUrl(adminUrl, name),
    drop: () =>
      withAdmin(adminUrl, (client) => client.query(`drop database if exists "${name}" with (force)`)).then(
        () => undefined,
      ),
  };
}

/** Whether the three servers answer, and if not, why (one `host:port: reason` per missing server). */
export interface MultiServerAvailability {
  readonly available: boolean;
  readonly reason?: string;
}

let probed: Promise<MultiServerAvailability> | undefined;

/** Connects to each of the three servers once per test process (a short timeout: absence is told fast). */
export function multiServerAvailability(): Promise<MultiServerAvailability> {
  probed ??= probeAll();
  return probed;
}

async function probeAll(): Promise<MultiServerAvailability> {
  const failures = (await Promise.all([MAIN_SERVER_URL, ...EXTRA_SERVER_URLS, STOPPABLE_SERVER_URL].map(probe))).filter(
    (failure) => failure !== undefined,
  );
  return failures.length === 0 ? { available: true } : { available: false, reason: failures.join('; ') };
}

/** Undefined when a real connection to `url` answers `select 1`, else `host:port: reason`. */
async function probe(url: string): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3000 });
  try {
    await client.connect();
    await client.query('select 1');
    return undefined;
  } catch (error) {
    return `${hostPort(url)}: ${(error as Error).message || String(error)}`;
  } finally {
    await client.end().catch(() => undefined);
  }
}

function missingMessage(reason: string | undefined): string {
  return `the multi-server tests need PostgreSQL on 127.0.0.1:5432, :5433, :5434 and :5435 (.ci/run creates the clusters tm5433, tm5434 and tm5435): ${reason}`;
}

/**
 * The admin URLs of the two extra servers (:5433, :5434) once all three servers answer; rejects,
 * naming the missing ones, when they do not.
 */
export async function extraServerUrls(): Promise<readonly string[]> {
  const { available, reason } = await multiServerAvailability();
  if (!available) throw new Error(missingMessage(reason));
  return EXTRA_SERVER_URLS;
}

/**
 * For `describe.skipIf(await requireServersOrSkip())(…)`: false when the servers answer; true
 * (skip, printing why) when they do not on a developer machine; under CI (`CI` set) it throws,
 * so that the test file FAILS instead of skipping what CI must run. The server pass of the suite
 * (TEST_DATABASE_URL set) runs them; the embedded-engine pass skips them (they use no PGlite).
 */
export async function requireServersOrSkip(): Promise<boolean> {
  // These tests never touch the embedded engine: they run once, in the server pass of the suite.
  if (!process.env.TEST_DATABASE_URL) {
    console.warn('skipped in the embedded-engine pass: the multi-server tests run with TEST_DATABASE_URL');
    return true;
  }
  const { available, reason } = await multiServerAvailability();
  if (available) return false;
  if (process.env.CI) throw new Error(`CI needs the servers: ${missingMessage(reason)}`);
  console.warn(`skipped: ${missingMessage(reason)}`);
  return true;
}

/** One fresh database per server for one test file; `drop()` removes them (and may be called again). */
export interface ServerDatabases {
  /** The database's name, the same on each server. */
  readonly name: string;
  /** Its URL on the main server (5432): the DATABASE_URL. */
  readonly main: string;
  /** Its URLs on the extra servers (5433, 5434), in that order. */
  readonly extra: readonly string[];
  /** DATABASE_URL and TENANT_SERVERS (the extra servers under `names`) for these databases. */
  env(names?: readonly [string, string]): { DATABASE_URL: string; TENANT_SERVERS: string };
  drop(): Promise<void>;
}

/**
 * Creates the database `<prefix>_<pid>_<time>` on each of the three servers (what is created is
 * dropped again if one of them fails). Rejects with the reason when the servers are absent.
 */
export async function createDatabases(prefix: string): Promise<ServerDatabases> {
  const extraAdmins = await extraServerUrls();
  const admins = [MAIN_SERVER_URL, ...extraAdmins];
  const name = `${prefix}_${process.pid}_${Date.now().toString(36)}`
    .toLowerCase()
    .replace(/[^a-z0-9_]/g, '_')
    .slice(0, 63);
  const created: string[] = [];
  const drop = async (): Promise<void> => {
    const errors: unknown[] = [];
    for (const admin of created.splice(0)) {
      await withAdmin(admin, (client) => client.query(`drop database if exists "${name}" with (force)`)).catch(
        (error: unknown) => errors.push(error),
      );
    }
    if (errors.length > 0) throw errors[0];
  };
  try {
    for (const admin of admins) {
      await withAdmin(admin, (client) => client.query(`create database "${name}"`));
      created.push(admin);
    }
  } catch (error) {
    await drop().catch(() => undefined);
    throw error;
  }
  const [main, ...extra] = admins.map((admin) => databaseUrl(admin, name));
  return {
    name,
    main: main!,
    extra,
    env: (names = ['eu1', 'eu2']) => ({
      DATABASE_URL: main!,
      TENANT_SERVERS: extra.map((url, i) => `${names[i]}=${url}`).join(','),
    }),
    drop,
  };
}

/** Runs `cb` on a fresh connection to `url`, closed again afterwards. */
export async function withAdmin<T>(url: string, cb: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await cb(client);
  } finally {
    await client.end();
  }
}

function databaseUrl(adminUrl: string, database: string): string {
  const url = new URL(adminUrl);
  url.pathname = `/${database}`;
  return url.toString();
}

function hostPort(url: string): string {
  const parsed = new URL(url);
  return `${parsed.hostname}:${parsed.port || '5432'}`;
}

/** One query on a fresh connection to `url` (closed again): the rows. */
export async function queryOn<T>(url: string, sql: string, values: unknown[] = []): Promise<T[]> {
  return withAdmin(url, async (client) => (await client.query(sql, values)).rows as T[]);
}

/** A temporary migration folder holding these files (name → text). */
export function migrationFolder(files: Record<string, string>, prefix = 'servers-'): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  for (const [name, text] of Object.entries(files)) writeFileSync(path.join(dir, name), text);
  return dir;
}
