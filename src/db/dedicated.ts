import { createRequire } from 'node:module';
import type { Knex } from 'knex';

// Knex builds a transaction's `trx` this way (makeTxClient + makeKnex); there is no public API
// for "a Knex bound to one connection, outside a transaction", which migrations declaring
// `config = { transaction: false }` need so that their session scoping stays on one connection.
const requireHere = createRequire(import.meta.url);
const makeKnex = requireHere('knex/lib/knex-builder/make-knex.js') as (client: unknown) => Knex;

interface KnexClientInternals {
  acquireConnection(): Promise<PooledConnection>;
  releaseConnection(connection: PooledConnection): Promise<unknown>;
  version?: string;
  config: unknown;
  driver: unknown;
  connectionSettings: unknown;
  valueForUndefined: unknown;
  logger: unknown;
}

type PooledConnection = { __knex__disposed?: unknown };

/**
 * Marks a pooled connection so that Knex never hands it out again: Knex's own mark, which the
 * pool checks when the connection is released or validated, destroying it and opening a fresh
 * one. For a connection that may hold session state we could not clean up.
 */
export function discardConnection(connection: unknown, reason: unknown): void {
  (connection as PooledConnection).__knex__disposed = reason;
}

/**
 * Runs `cb` with a Knex whose every query goes to one connection taken from the pool, in
 * autocommit mode. The connection returns to the pool afterwards; if `cb` failed, it is
 * discarded instead, so that no session state it may have left (search_path, locks) can
 * reach another caller.
 */
export async function withDedicatedConnection<T>(knex: Knex, cb: (conn: Knex) => Promise<T>): Promise<T> {
  const client = knex.client as unknown as KnexClientInternals;
  const connection = await client.acquireConnection();
  const bound = Object.create(Object.getPrototypeOf(client)) as KnexClientInternals;
  bound.version = client.version;
  bound.config = client.config;
  bound.driver = client.driver;
  bound.connectionSettings = client.connectionSettings;
  bound.valueForUndefined = client.valueForUndefined;
  bound.logger = client.logger;
  bound.acquireConnection = async () => connection;
  bound.releaseConnection = async () => undefined;
  let clean = false;
  try {
    const result = await cb(makeKnex(bound));
    clean = true;
    return result;
  } finally {
    if (!clean) discardConnection(connection, new Error('discarded after a failed dedicated-connection task'));
    await client.releaseConnection(connection);
  }
}
