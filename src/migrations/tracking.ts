import type { Knex } from 'knex';
import type { AppliedMigration } from './plan.ts';

/**
 * Where one schema's run happens: the schema that holds the tracking table and goes first on the
 * search path, and which bookkeeping it keeps besides its tracking rows.
 */
export interface SchemaTarget {
  readonly schema: string;
  readonly trackingTable: string;
  /** The search_path value for the run, e.g. `"tid_cf4116b064", public`. */
  readonly searchPath: string;
  /** Also create Knex's `<table>_lock` table, so that the knex CLI can read the history. */
  readonly knexLockTable?: boolean;
  /**
   * A tenant schema: its registry row (digest, last error) and the run ledger are kept in step
   * with its tracking rows. False for `public` (master migrations).
   */
  readonly tenant?: boolean;
}

type Conn = Knex | Knex.Transaction;

/** Reads a tracking table in the order the migrations were applied. */
export async function readApplied(conn: Conn, target: SchemaTarget): Promise<AppliedMigration[]> {
  const result = await conn.raw('select name, batch from ??.?? order by id', [target.schema, target.trackingTable]);
  return result.rows.map((row: { name: string; batch: number }) => ({ name: row.name, batch: Number(row.batch) }));
}

/** Knex's own tracking-table shape, so that `knex migrate:list` reads the same history. */
export async function createTrackingTables(conn: Conn, target: SchemaTarget): Promise<void> {
  await conn.schema.withSchema(target.schema).createTable(target.trackingTable, (t) => {
    t.increments();
    t.string('name');
    t.integer('batch');
    t.timestamp('migration_time');
  });
  if (target.knexLockTable) {
    const lockTable = `${target.trackingTable}_lock`;
    // Knex may have made it already (its own CLI creates both tables); one row, unlocked.
    await conn.raw('create table if not exists ??.?? ("index" serial primary key, "is_locked" integer)', [
      target.schema,
      lockTable,
    ]);
    await conn.raw('insert into ??.?? ("is_locked") select 0 where not exists (select 1 from ??.??)', [
      target.schema,
      lockTable,
      target.schema,
      lockTable,
    ]);
  }
}

/** The SQL (and bindings) that writes the tracking rows of `names` going up, or deletes them going down. */
export function trackingChange(
  target: SchemaTarget,
  direction: 'up' | 'down',
  names: readonly string[],
  batch: number,
): { readonly sql: string; readonly bindings: readonly Knex.RawBinding[] } {
  if (direction === 'up') {
    const now = new Date();
    return {
      sql: `insert into ??.?? (name, batch, migration_time) values ${names.map(() => '(?, ?, ?)').join(', ')}`,
      bindings: [target.schema, target.trackingTable, ...names.flatMap((name) => [name, batch, now])],
    };
  }
  return {
    sql: 'delete from ??.?? where name = any(?::text[])',
    bindings: [target.schema, target.trackingTable, [...names]],
  };
}
