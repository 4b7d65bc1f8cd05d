import knexFactory, { type Knex } from 'knex';
import type { ConnectionTarget, ToolkitConfig } from '../config/config.ts';
import { connectionFailure } from './connection-errors.ts';
import type { EmbeddedServer } from './embedded.ts';

export { connectionFailure, isConnectionLoss } from './connection-errors.ts';

/** An open connection pool, and what it points at. Close it with `close()`. */
export interface Database {
  readonly knex: Knex;
  /** `host:port` or the embedded data folder, for messages. */
  readonly describe: string;
  readonly embedded: boolean;
  readonly poolMax: number;
  close(): Promise<void>;
}

/** How `openDatabase` reports what it does (e.g. the embedded engine's start-up line). */
export interface OpenOptions {
  /** Receives the one line announcing the embedded database. */
  readonly log?: (line: string) => void;
}

const debugEnabled = (): boolean => Boolean(process.env.DEBUG);
const quietLog = {
  warn: (message: unknown) => void (debugEnabled() && process.stderr.write(`knex: ${String(message)}\n`)),
  error: (message: unknown) => void (debugEnabled() && process.stderr.write(`knex: ${String(message)}\n`)),
  deprecate: () => undefined,
  debug: (message: unknown) => void (debugEnabled() && process.stderr.write(`knex: ${String(message)}\n`)),
};

/** Knex settings for a server target; shared with the benchmark so that it measures the same client. */
export function knexConfigFor(target: ConnectionTarget & { kind: 'server' }, poolMax: number): Knex.Config {
  const ssl = target.ssl === false ? undefined : { ...target.ssl };
  const connection: Knex.PgConnectionConfig = target.connectionString
    ? {
        connectionString: ssl ? withoutSslParams(target.connectionString) : target.connectionString,
        ...(ssl ? { ssl } : {}),
      }
    : {
        host: target.host,
        port: target.port,
        ...(target.user === undefined ? {} : { user: target.user }),
        ...(target.password === undefined ? {} : { password: target.password }),
        ...(target.database === undefined ? {} : { database: target.database }),
        ...(ssl ? { ssl } : {}),
      };
  return {
    client: 'pg',
    connection: { ...connection, connectionTimeoutMillis: 10_000 } as Knex.PgConnectionConfig,
    pool: { min: 0, max: poolMax },
    acquireConnectionTimeout: 120_000,
    // Knex writes pool and deprecation notices to the console; ours are reported as errors instead.
    log: quietLog,
  };
}

/** The running embedded engine, as a server target the `pg` driver connects to. */
export function embeddedTarget(embedded: EmbeddedServer): ConnectionTarget & { kind: 'server' } {
  return {
    kind: 'server',
    host: embedded.host,
    port: embedded.port,
    user: 'postgres',
    password: undefined,
    database: 'postgres',
    describe: `embedded database at ${embedded.dataDir}`,
    connectionString: undefined,
    ssl: false,
  };
}

/**
 * node-postgres lets `sslmode=…` in a URL override the `ssl` object it is given, which would
 * silently drop DB_SSL_CERT_PATH and DB_SSL_REJECT_UNAUTHORIZED: when those are configured,
 * they win and the URL's ssl parameters are removed.
 */
function withoutSslParams(url: string): string {
  const parsed = new URL(url);
  for (const key of [...parsed.searchParams.keys()]) if (/^ssl/i.test(key)) parsed.searchParams.delete(key);
  return parsed.toString();
}

/**
 * Opens the shared pool for the configured target (starting the embedded engine when no
 * database is configured) and checks that the server answers, so that an unreachable server
 * is one clear ConnectionError naming host and port instead of a failure deep inside a run.
 */
export async function openDatabase(config: ToolkitConfig, options: OpenOptions = {}): Promise<Database> {
  const target = config.connection;
  let embedded: EmbeddedServer | undefined;
  let serverTarget: ConnectionTarget & { kind: 'server' };
  if (target.kind === 'embedded') {
    // Loaded only when used: PGlite is large, and a server run never needs it.
    const { startEmbedded } = await import('./embedded.ts');
    embedded = await startEmbedded(target.dataDir);
    options.log?.(`Using the embedded PostgreSQL (PGlite with pgvector); data in ${embedded.dataDir}`);
    serverTarget = embeddedTarget(embedded);
  } else {
    serverTarget = target;
  }
  // The embedded engine is a single backend: one connection, never a multiplexed second session.
  const poolMax = embedded ? 1 : config.poolMax;
  const knexConfig = knexConfigFor(serverTarget, poolMax);
  if (embedded) {
    // The embedded server drops a connect that comes right after an abrupt disconnect (its one
    // slot frees a tick later): let the pool retry instead of failing the first acquire.
    knexConfig.pool = { ...knexConfig.pool, propagateCreateError: false };
    knexConfig.acquireConnectionTimeout = 30_000;
  }
  const knex = knexFactory(knexConfig);
  const close = async (): Promise<void> => {
    await knex.destroy();
    await embedded?.stop();
  };
  try {
    await knex.raw('select 1');
  } catch (error) {
    await close().catch(() => undefined);
    throw connectionFailure(serverTarget.describe, error);
  }
  return { knex, describe: serverTarget.describe, embedded: embedded !== undefined, poolMax, close };
}

/** Runs `cb` with an open database and always closes it. */
export async function withDatabase<T>(
  config: ToolkitConfig,
  cb: (db: Database) => Promise<T>,
  options: OpenOptions = {},
): Promise<T> {
  const db = await openDatabase(config, options);
  try {
    return await cb(db);
  } finally {
    await db.close();
  }
}
