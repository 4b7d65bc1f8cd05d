import type { Knex } from 'knex';
import { quoteIdent } from '../db/identifiers.ts';
import { ToolkitError } from '../errors.ts';
import type { SchemaTarget } from './tracking.ts';

/**
 * The escape guard: a tenant's batch may change only its own schema. Checked in the batch's own
 * transaction, after its migrations and before its bookkeeping, so that an escaping batch is
 * rolled back with nothing left behind. What counts as an escape:
 * - a relation outside the schema written or altered: DDL and DML hold a lock stronger than
 *   `RowShareLock` on it until commit (reads and `FOR SHARE` row locks are fine), which covers
 *   `CREATE TABLE public.x`, `ALTER TABLE`, `CREATE INDEX`/`TRIGGER` on it, a foreign key to it
 *   (it adds triggers there), and rows written into `public` or another tenant's tables;
 * - a function, type or schema created (or replaced) by this transaction outside the schema,
 *   found by `xmin` in the catalogs;
 * - `search_path` no longer the tenant's (a `SET search_path` inside the batch).
 * The cost is one round trip per batch: the lock table is the backend's own, the type scan is an
 * index range over OIDs newer than the batch's start, and `pg_proc` is small.
 */

/** Taken before the batch runs, in the same transaction (part of the scoping statement). */
export interface GuardMark {
  /** Relations this transaction had already locked (e.g. the provisioner's registry read). */
  readonly locked: readonly string[];
  /** The newest type OID before the batch: types created by it are newer (OIDs grow; see README). */
  readonly typeOid: string;
}

/** SQL columns that the scoping statement selects to take the mark (no extra round trip). */
export const GUARD_MARK_COLUMNS = `(select coalesce(array_agg(relation::text), '{}') from pg_locks
          where pid = pg_backend_pid() and locktype = 'relation') as guard_locked,
        (select max(oid)::text from pg_type) as guard_type_oid`;

export function guardMarkOf(row: { guard_locked: string[]; guard_type_oid: string }): GuardMark {
  return { locked: row.guard_locked, typeOid: row.guard_type_oid };
}

/** One object changed outside the tenant's schema. */
export interface Escape {
  readonly kind: 'relation' | 'function' | 'type' | 'schema' | 'search_path';
  readonly name: string;
}

/** A batch changed something outside its schema; it was rolled back. */
export class SchemaEscapeError extends ToolkitError {
  readonly escapes: readonly Escape[];
  readonly migration: string | null;
  constructor(schema: string, migrations: readonly string[], escapes: readonly Escape[]) {
    const what = escapes.map((e) => `${e.kind} ${e.name}`).join(', ');
    const by = migrations.length === 1 ? migrations[0]! : `the batch (${migrations.join(', ')})`;
    super(
      'E_SCHEMA_ESCAPE',
      `${by} changed objects outside ${schema}: ${what}; rolled back (a migration that must do this declares config.allowOutsideSchema = true)`,
    );
    this.escapes = escapes;
    this.migration = migrations.length === 1 ? migrations[0]! : null;
  }
}

/** Whether a namespace (given by OID) is PostgreSQL's own: its catalogs, toast and temporary schemas. */
const systemNamespace = (
  oid: string,
): string => `(${oid}::regnamespace::text in ('pg_catalog', 'pg_toast', 'information_schema')
          or ${oid}::regnamespace::text like 'pg\\_temp\\_%' or ${oid}::regnamespace::text like 'pg\\_toast\\_temp\\_%')`;

/**
 * What the transaction on `conn` changed outside `target.schema` since `mark`; empty when nothing.
 * Each part reads one catalog and names a row's namespace by a cast (`::regnamespace`, a cache
 * lookup) instead of joining `pg_namespace`: with a join, stale statistics on `pg_namespace` (it
 * grows by one row per tenant, and is analyzed only now and then) led the planner to scan all of
 * `pg_proc` once per schema, about 0.3 ms per tenant schema in the database on every batch. The
 * transaction id and home schema are scalar subqueries (not a join), so that each scan filters
 * on `xmin` first and casts only the rows this transaction wrote.
 */
export async function findEscapes(
  conn: Knex | Knex.Transaction,
  target: SchemaTarget,
  mark: GuardMark,
): Promise<Escape[]> {
  const result = await conn.raw(
    `with me as materialized (select (txid_current() % 4294967296)::text::xid as xid, to_regnamespace(?) as home)
     select 'relation' as kind, format('%s.%I', c.relnamespace::regnamespace, c.relname) as name
       from pg_locks l join pg_class c on c.oid = l.relation
      where l.pid = pg_backend_pid() and l.locktype = 'relation'
        and l.mode not in ('AccessShareLock', 'RowShareLock')
        and c.relnamespace <> (select home from me) and not ${systemNamespace('c.relnamespace')}
        and not (l.relation::text = any(?::text[]))
     union
     select 'function', p.oid::regprocedure::text
       from pg_proc p
      where p.xmin = (select xid from me) and p.pronamespace <> (select home from me) and not ${systemNamespace('p.pronamespace')}
     union
     select 'type', format_type(t.oid, null)
       from pg_type t
      where t.oid > ?::oid and t.xmin = (select xid from me) and t.typnamespace <> (select home from me) and not ${systemNamespace('t.typnamespace')}
        and t.typrelid = 0 and t.typcategory <> 'A' -- a relation's row type and arrays: named by their owner
     union
     select 'schema', n.oid::regnamespace::text from pg_namespace n
      where n.xmin = (select xid from me) and n.oid <> (select home from me) and not ${systemNamespace('n.oid')}
     union
     select 'search_path', current_setting('search_path') where current_setting('search_path') <> ?
     order by 1, 2`,
    [quoteIdent(target.schema), [...mark.locked], mark.typeOid, target.searchPath],
  );
  return result.rows as Escape[];
}
