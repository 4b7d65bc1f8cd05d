import { randomBytes } from 'node:crypto';
import type { Knex } from 'knex';
import { tenantSearchPath } from '../db/identifiers.ts';

/**
 * The lint's database side: one transaction that is always rolled back, a scratch schema inside
 * it, the SQL a migration sends captured from Knex's query events, and a catalog fingerprint of
 * the scratch schema to compare before up and after up → down.
 */

class RolledBack extends Error {}

/**
 * Runs `cb` in a transaction and always rolls it back, returning what `cb` returned. Whatever the
 * callback created (scratch schema, tables, extensions) is gone afterwards, on success or failure.
 */
export async function withRolledBackTransaction<T>(knex: Knex, cb: (trx: Knex.Transaction) => Promise<T>): Promise<T> {
  const rollback = new RolledBack('lint transaction rolled back on purpose');
  let result: { value: T } | undefined;
  try {
    await knex.transaction(async (trx) => {
      result = { value: await cb(trx) };
      throw rollback;
    });
  } catch (error) {
    if (error !== rollback) throw error;
  }
  if (!result) throw new Error('the lint transaction ended without a result');
  return result.value;
}

/** A fresh scratch schema name: `lint_scratch_` and 12 random hex digits. */
export function scratchSchemaName(): string {
  return `lint_scratch_${randomBytes(6).toString('hex')}`;
}

/** Creates the scratch schema in the transaction and puts it first on the transaction's search path, `public` after. */
export async function openScratchSchema(trx: Knex.Transaction, schema: string): Promise<string> {
  await trx.raw('create schema ??', [schema]);
  const searchPath = tenantSearchPath(schema);
  await scopeSearchPath(trx, searchPath);
  return searchPath;
}

/** Sets the search path for the rest of the transaction (a migration that changed it is put back). */
export async function scopeSearchPath(trx: Knex.Transaction, searchPath: string): Promise<void> {
  await trx.raw("select set_config('search_path', ?, true)", [searchPath]);
}

/** One query as Knex sent it: the SQL with `$n` placeholders and the bound values. */
export interface CapturedQuery {
  readonly sql: string;
  readonly bindings: readonly unknown[];
}

export type Captured<T> =
  | { readonly ok: true; readonly value: T; readonly queries: readonly CapturedQuery[] }
  | { readonly ok: false; readonly error: unknown; readonly queries: readonly CapturedQuery[] };

/** Records the queries sent on one transaction (and its savepoints) while a callback runs. */
export interface QueryCapture {
  /** Runs `cb`, capturing its queries; a failure is returned with the queries sent before it, not thrown. */
  during<T>(cb: () => Promise<T>): Promise<Captured<T>>;
  stop(): void;
}

/**
 * Listens to the transaction's `query` events: a transaction holds one connection for itself and
 * its savepoints re-emit on it, so these are exactly the queries run on it, never another
 * session's from a shared pool. Only the queries sent while `during` runs are kept.
 */
export function captureQueries(trx: Knex.Transaction): QueryCapture {
  let sink: CapturedQuery[] | undefined;
  const listener = (query: { sql?: unknown; bindings?: unknown }): void => {
    if (!sink || typeof query.sql !== 'string') return;
    sink.push({ sql: query.sql, bindings: Array.isArray(query.bindings) ? query.bindings : [] });
  };
  trx.on('query', listener);
  return {
    async during<T>(cb: () => Promise<T>): Promise<Captured<T>> {
      const queries: CapturedQuery[] = [];
      sink = queries;
      try {
        return { ok: true, value: await cb(), queries };
      } catch (error) {
        return { ok: false, error, queries };
      } finally {
        sink = undefined;
      }
    },
    stop: () => void trx.off('query', listener),
  };
}

/**
 * What a schema holds, as sorted lines: relations (tables, views, sequences, …), columns with
 * type, nullability and default, indexes, constraints, triggers, functions and standalone types.
 * Two fingerprints are equal when the schema's structure is; data is not compared.
 */
export async function fingerprint(trx: Knex.Transaction, schema: string): Promise<string[]> {
  const result = await trx.raw(
    `with ns as (select oid from pg_namespace where nspname = ?)
     select format('relation %s (%s)', c.relname, c.relkind) as line
       from pg_class c where c.relnamespace = (select oid from ns) and c.relkind <> 'i'
     union all
     select format('column %s.%s %s%s%s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                   case when a.attnotnull then ' not null' else '' end,
                   ' default ' || pg_get_expr(d.adbin, d.adrelid))
       from pg_attribute a
       join pg_class c on c.oid = a.attrelid
       left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
      where c.relnamespace = (select oid from ns) and c.relkind <> 'i' and a.attnum > 0 and not a.attisdropped
     union all
     select format('index %s', pg_get_indexdef(i.indexrelid))
       from pg_index i join pg_class c on c.oid = i.indexrelid
      where c.relnamespace = (select oid from ns)
     union all
     select format('constraint %s%s %s', c.relname || '.', con.conname, pg_get_constraintdef(con.oid))
       from pg_constraint con left join pg_class c on c.oid = con.conrelid
      where con.connamespace = (select oid from ns)
     union all
     select format('trigger %s.%s', c.relname, t.tgname)
       from pg_trigger t join pg_class c on c.oid = t.tgrelid
      where c.relnamespace = (select oid from ns) and not t.tgisinternal
     union all
     select format('function %s(%s)', p.proname, pg_get_function_identity_arguments(p.oid))
       from pg_proc p where p.pronamespace = (select oid from ns)
     union all
     select format('type %s (%s)', t.typname, t.typtype)
       from pg_type t where t.typnamespace = (select oid from ns) and t.typtype in ('e', 'd', 'r', 'm')`,
    [schema],
  );
  // The scratch name is noise in what a reader sees ("index … ON lint_scratch_….members").
  const prefix = `${schema}.`;
  return (result.rows as { line: string }[]).map((r) => r.line.replaceAll(prefix, '')).sort();
}

/** What `after` lacks of `before` and what it has that `before` did not. */
export function diffFingerprints(
  before: readonly string[],
  after: readonly string[],
): { readonly missing: string[]; readonly extra: string[] } {
  const had = new Set(before);
  const has = new Set(after);
  return { missing: before.filter((l) => !has.has(l)), extra: after.filter((l) => !had.has(l)) };
}
