import type { Knex } from 'knex';

/**
 * Changes made to a tenant's tracking table outside the toolkit (plain `knex migrate:rollback`,
 * a script's `knex.migrate.latest`) clear that tenant's `migrations_digest`, so that the next
 * `migrate:tenants` reads its tracking table instead of trusting the registry. The toolkit marks
 * its own tracking writes with the setting `tenant_migrate.writer = on` (transaction-local, or
 * for the session of a `transaction: false` batch), and keeps the digest in step itself.
 *
 * The trigger is statement-level: a Knex batch of any size costs one call. It also sits on Knex's
 * lock table (`knex_migrations_tenant_lock`), so that a tenant whose Knex lock plain Knex took
 * (and a killed Knex left set) is not trusted by its digest either. The toolkit adds both to
 * every tracking table it creates or finds without them (under the tenant's lock); this
 * migration adds it to the tracking tables of the tenants already registered, because a tenant
 * that is up to date is never opened by a run (the digest fast path) and would otherwise never
 * get it.
 *
 * Outside a transaction, in chunks: one transaction that creates a trigger on every tenant's
 * table would hold one lock per tenant until its commit, more than the server's lock table holds
 * at a few thousand tenants. Every statement is idempotent (`or replace`), so a run that stops
 * half way is simply run again.
 */
export const config = { transaction: false };

const TRACKING_TABLE = 'knex_migrations_tenant';
const LOCK_TABLE = 'knex_migrations_tenant_lock';
const TRIGGER = 'tenant_migrate_tracking_changed';
const CHUNK = 200;

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    create or replace function public.tenant_migrate_tracking_changed() returns trigger
    language plpgsql as $$
    begin
      -- The toolkit's own writes carry the mark and keep the digest themselves.
      if coalesce(current_setting('tenant_migrate.writer', true), '') <> 'on' then
        update public.tenants set migrations_digest = null
         where schema_name = tg_table_schema and migrations_digest is not null;
      end if;
      return null;
    end
    $$`);
  // Every tracking table and Knex lock table of a registered tenant (a lock table is missing on
  // tenants the toolkit made before it kept one: their next batch adds it, with its trigger).
  const result = await knex.raw(
    `select t.schema_name as schema, x.name as table
       from public.tenants t cross join unnest(array[?, ?]::text[]) as x(name)
      where to_regclass(format('%I.%I', t.schema_name, x.name)) is not null
      order by t.id, x.name`,
    [TRACKING_TABLE, LOCK_TABLE],
  );
  const tables = result.rows as { schema: string; table: string }[];
  await inChunks(knex, tables, ({ schema, table }) =>
    knex
      .raw(
        `create or replace trigger ?? after insert or update or delete or truncate on ??.??
           for each statement execute function public.tenant_migrate_tracking_changed()`,
        [TRIGGER, schema, table],
      )
      .toQuery(),
  );
}

export async function down(knex: Knex): Promise<void> {
  const result = await knex.raw(
    `select n.nspname as schema, c.relname as table from pg_trigger g
       join pg_class c on c.oid = g.tgrelid join pg_namespace n on n.oid = c.relnamespace
      where g.tgname = ? and c.relname in (?, ?)`,
    [TRIGGER, TRACKING_TABLE, LOCK_TABLE],
  );
  const tables = result.rows as { schema: string; table: string }[];
  await inChunks(knex, tables, ({ schema, table }) =>
    knex.raw('drop trigger if exists ?? on ??.??', [TRIGGER, schema, table]).toQuery(),
  );
  await knex.raw('drop function if exists public.tenant_migrate_tracking_changed() cascade');
}

/** One simple query (so one transaction) per chunk of tables: its statements carry no bound values. */
async function inChunks<T>(knex: Knex, items: readonly T[], statement: (item: T) => string): Promise<void> {
  for (let start = 0; start < items.length; start += CHUNK) {
    await knex.raw(
      items
        .slice(start, start + CHUNK)
        .map(statement)
        .join(';\n'),
    );
  }
}
