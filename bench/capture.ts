import knexFactory from 'knex';
import { folderSource } from '../src/migrations/source.ts';
import { BENCH_MIGRATIONS, type Server } from './server.ts';

/** One statement as Knex sends it to the driver: `$n` placeholders and prepared bindings. */
export interface Statement {
  readonly sql: string;
  readonly bindings: readonly unknown[];
}

class Rollback extends Error {}

/**
 * The SQL the bench migrations emit, captured once from Knex itself: every `up` runs in a
 * scratch schema inside a transaction that is rolled back, with a `query` listener recording
 * each statement. The statements name no schema (the migrations rely on the search path), so
 * the floor can replay them in any tenant schema.
 */
export async function captureMigrationSql(server: Server, database: string): Promise<Statement[]> {
  const migrations = await folderSource(BENCH_MIGRATIONS).load();
  const knex = knexFactory(server.knexConfig(database, 1));
  const statements: Statement[] = [];
  let recording = false;
  knex.on('query', (q: { sql: string; bindings?: unknown[] }) => {
    if (recording) statements.push({ sql: q.sql, bindings: q.bindings ?? [] });
  });
  try {
    await knex.transaction(async (trx) => {
      await trx.raw('create schema bench_capture');
      await trx.raw("select set_config('search_path', 'bench_capture, public', true)");
      recording = true;
      for (const migration of migrations) await migration.up(trx);
      recording = false;
      throw new Rollback();
    });
  } catch (error) {
    if (!(error instanceof Rollback)) throw error;
  } finally {
    await knex.destroy();
  }
  if (statements.some((s) => s.sql.includes('bench_capture')))
    throw new Error('captured SQL names the scratch schema; it cannot be replayed elsewhere');
  return statements;
}
