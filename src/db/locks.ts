import type { Knex } from 'knex';

/**
 * First key of every advisory lock the toolkit takes, so that its locks never collide with
 * an application's single-key locks. The second key is `hashtext(<name>)`: a hash collision
 * between two schemas only makes them queue, never share data.
 */
export const LOCK_NAMESPACE = 0x7e4a_7001;

/** Scope for the lock that serialises `CREATE EXTENSION` across provisioners. */
export const EXTENSIONS_LOCK = 'toolkit:extensions';

/**
 * Takes the transaction-scoped advisory lock for `name` (a schema, usually), waiting for it.
 * Released by COMMIT or ROLLBACK, or by the server when the connection dies: a killed process
 * never leaves it held.
 */
export async function lockForTransaction(trx: Knex.Transaction, name: string): Promise<void> {
  await trx.raw('select pg_advisory_xact_lock(?, hashtext(?))', [LOCK_NAMESPACE, name]);
}

/** Session-level variant for work that cannot run in a transaction; pair with `unlockSession`. */
export async function lockSession(conn: Knex, name: string): Promise<void> {
  await conn.raw('select pg_advisory_lock(?, hashtext(?))', [LOCK_NAMESPACE, name]);
}

export async function unlockSession(conn: Knex, name: string): Promise<void> {
  await conn.raw('select pg_advisory_unlock(?, hashtext(?))', [LOCK_NAMESPACE, name]);
}

/**
 * Tries the transaction-scoped lock for `name` without waiting: false when another session holds
 * it (a toolkit run on that schema right now). Released like `lockForTransaction`.
 */
export async function tryLockForTransaction(trx: Knex.Transaction, name: string): Promise<boolean> {
  const result = await trx.raw('select pg_try_advisory_xact_lock(?, hashtext(?)) as locked', [LOCK_NAMESPACE, name]);
  return Boolean(result.rows[0]?.locked);
}
