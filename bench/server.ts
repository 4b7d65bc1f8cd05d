import path from 'node:path';
import type { Knex } from 'knex';
import pg from 'pg';
import { type ConnectionTarget, type Env, loadConfig, type ToolkitConfig } from '../src/config/config.ts';
import { knexConfigFor } from '../src/db/connection.ts';

/** The repository root: migration folders and the CLI entry point are found from here. */
export const ROOT = path.resolve(import.meta.dirname, '..');
export const BENCH_MIGRATIONS = path.join(ROOT, 'bench', 'migrations');
export const MASTER_MIGRATIONS = path.join(ROOT, 'master-migrations');

/** The variables that say where the server is; the bench rewrites only the database name. */
const CONNECTION_VARS = [
  'DATABASE_URL',
  'DB_HOST',
  'DB_PORT',
  'DB_USER',
  'DB_PASSWORD',
  'DB_NAME',
  'DB_SSL',
  'DB_SSL_CERT_PATH',
  'DB_SSL_REJECT_UNAUTHORIZED',
];

/** Refusal to run on the embedded engine: its single backend would measure nothing a server does. */
export class EmbeddedRefusedError extends Error {
  constructor() {
    super(
      'The benchmark needs a PostgreSQL server: set DATABASE_URL (or DB_HOST, DB_PORT, DB_USER, DB_PASSWORD, DB_NAME). ' +
        'It will not run on the embedded engine (PGlite): one backend and one connection cannot show how a fleet migration behaves on a server. ' +
        'The role needs CREATEDB: every variant runs on its own bench_* database, dropped afterwards.',
    );
  }
}

type ServerTarget = ConnectionTarget & { kind: 'server' };

/** The configured server, the database-creating admin connection, and per-database settings. */
export interface Server {
  /** `host:port`, for the report. */
  readonly describe: string;
  /** The host name or address it was reached at (to tell servers on this machine from others). */
  readonly host: string;
  /** The role it connects as (undefined: the driver's default). */
  readonly user: string | undefined;
  /** The configured database: where the bench connects to create and drop its own. */
  readonly adminDatabase: string;
  /** Pool size the toolkit uses by default (DB_POOL_MAX, default 10): its default concurrency, and the floor's connections. */
  readonly poolMax: number;
  /** Environment (connection variables only) pointing at `database`. */
  envFor(database: string): Record<string, string>;
  /** Validated toolkit config for `database`, with overrides (migration folders, extensions). */
  configFor(database: string, overrides?: Env): ToolkitConfig;
  /** Knex settings for `database`, with the toolkit's own client settings. */
  knexConfig(database: string, poolMax: number): Knex.Config;
  /** A connected plain `pg` client on `database`. */
  client(database: string): Promise<pg.Client>;
  createDatabase(database: string): Promise<void>;
  dropDatabase(database: string): Promise<void>;
  /** PostgreSQL's version string. */
  version(): Promise<string>;
  close(): Promise<void>;
}

/** Opens the admin connection to the server named by `env`; throws EmbeddedRefusedError when none is. */
export async function openServer(env: Env): Promise<Server> {
  const base = loadConfig(env, ROOT);
  if (base.connection.kind !== 'server') throw new EmbeddedRefusedError();
  const connectionEnv = Object.fromEntries(
    CONNECTION_VARS.flatMap((k) => (env[k] === undefined ? [] : [[k, env[k]!]])),
  );

  const envFor = (database: string): Record<string, string> => {
    if (connectionEnv.DATABASE_URL?.trim()) {
      const url = new URL(connectionEnv.DATABASE_URL.trim());
      url.pathname = `/${encodeURIComponent(database)}`;
      return { ...connectionEnv, DATABASE_URL: url.toString() };
    }
    return { ...connectionEnv, DB_NAME: database };
  };
  const configFor = (database: string, overrides: Env = {}): ToolkitConfig =>
    loadConfig({ ...envFor(database), DB_POOL_MAX: String(base.poolMax), ...overrides }, ROOT);
  const targetFor = (database: string): ServerTarget => configFor(database).connection as ServerTarget;
  const knexConfig = (database: string, poolMax: number): Knex.Config => knexConfigFor(targetFor(database), poolMax);
  const client = async (database: string): Promise<pg.Client> => {
    const c = new pg.Client(knexConfig(database, 1).connection as pg.ClientConfig);
    await c.connect();
    return c;
  };

  const adminTarget = base.connection;
  const adminDatabase = adminTarget.database ?? adminTarget.user ?? 'postgres';
  const admin = await client(adminDatabase).catch((error: Error) => {
    throw new Error(`Cannot connect to PostgreSQL at ${adminTarget.describe}: ${error.message}`);
  });
  return {
    describe: adminTarget.describe,
    host: adminTarget.host,
    user: adminTarget.user,
    adminDatabase,
    poolMax: base.poolMax,
    envFor,
    configFor,
    knexConfig,
    client,
    createDatabase: async (database) => void (await admin.query(`create database ${pg.escapeIdentifier(database)}`)),
    dropDatabase: async (database) =>
      void (await admin.query(`drop database if exists ${pg.escapeIdentifier(database)} with (force)`)),
    version: async () => String((await admin.query('show server_version')).rows[0]?.server_version),
    close: () => admin.end(),
  };
}

/**
 * Runs `cb` on a freshly created database and always drops it. Names carry the process id so
 * that runs of several people on one server never touch each other's databases.
 */
export async function withFreshDatabase<T>(
  server: Server,
  label: string,
  cb: (database: string) => Promise<T>,
): Promise<T> {
  const database =
    `bench_${label.replace(/[^a-z0-9]/gi, '_').toLowerCase()}_${process.pid}_${(counter++).toString(36)}`.slice(0, 63);
  await server.createDatabase(database);
  live.set(database, server);
  try {
    return await cb(database);
  } finally {
    await server.dropDatabase(database);
    live.delete(database);
  }
}

/**
 * `withFreshDatabase` on each of `servers` at once: `cb` gets the databases in the order of
 * `servers`; every one created is dropped, whatever happens.
 */
export async function withFreshDatabases<T>(
  servers: readonly Server[],
  label: string,
  cb: (databases: readonly string[]) => Promise<T>,
): Promise<T> {
  const open = (i: number, databases: readonly string[]): Promise<T> =>
    i === servers.length
      ? cb(databases)
      : withFreshDatabase(servers[i]!, label, (database) => open(i + 1, [...databases, database]));
  return open(0, []);
}

let counter = 0;
/** Databases created and not yet dropped, and the server of each, for cleanup on Ctrl-C. */
export const live = new Map<string, Server>();
