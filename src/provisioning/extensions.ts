import type { Knex } from 'knex';
import { EXTENSIONS_LOCK, lockForTransaction } from '../db/locks.ts';
import { SQLSTATE, sqlState } from '../db/pg-errors.ts';
import { ToolkitError } from '../errors.ts';

/** A tenant needs an extension (e.g. `vector`) that the server does not have: provisioning fails before the schema is made. */
export class ExtensionUnavailableError extends ToolkitError {
  constructor(message: string, cause?: unknown) {
    super('E_EXTENSION_UNAVAILABLE', message, { cause });
  }
}

/**
 * Makes sure each extension exists in `public`. The common case (all present) is one query.
 * Creation is serialised under an advisory lock: two concurrent `CREATE EXTENSION IF NOT EXISTS`
 * can both pass the existence check and one then fails with a unique violation (23505).
 */
export async function ensureExtensions(knex: Knex, names: readonly string[]): Promise<void> {
  if (names.length === 0) return;
  if ((await missingExtensions(knex, names)).length === 0) return;
  await knex.transaction(async (trx) => {
    await lockForTransaction(trx, EXTENSIONS_LOCK);
    for (const name of await missingExtensions(trx, names)) {
      try {
        await trx.raw('create extension if not exists ?? schema public', [name]);
      } catch (error) {
        throw explain(name, error);
      }
    }
  });
}

async function missingExtensions(knex: Knex | Knex.Transaction, names: readonly string[]): Promise<string[]> {
  const result = await knex.raw('select extname from pg_extension where extname = any(?::text[])', [[...names]]);
  const present = new Set((result.rows as { extname: string }[]).map((r) => r.extname));
  return names.filter((n) => !present.has(n));
}

function explain(name: string, error: unknown): ToolkitError {
  const state = sqlState(error);
  const turnOff = 'or set TENANT_EXTENSIONS to the extensions you need (empty for none)';
  if (state === SQLSTATE.UNDEFINED_FILE || state === SQLSTATE.FEATURE_NOT_SUPPORTED) {
    const install =
      name === 'vector'
        ? 'install pgvector on the server (Debian/Ubuntu: apt install postgresql-<version>-pgvector; RDS and most managed services ship it) '
        : `install the ${name} extension on the server `;
    return new ExtensionUnavailableError(
      `The PostgreSQL server has no "${name}" extension: ${install}${turnOff}`,
      error,
    );
  }
  if (state === SQLSTATE.INSUFFICIENT_PRIVILEGE) {
    return new ExtensionUnavailableError(
      `Permission denied to create extension "${name}": create it once as a superuser (CREATE EXTENSION ${name} SCHEMA public) ${turnOff}`,
      error,
    );
  }
  return new ExtensionUnavailableError(`Cannot create extension "${name}": ${(error as Error).message}`, error);
}
