import type { Knex } from 'knex';

/**
 * The run ledger learns `tenants:run`: a run of kind `run` (a SQL file or a module run in every
 * selected tenant) whose tenant rows say `ran` or `failed`. A new file rather than an edit of
 * `20261202000001_run_ledger.ts`: databases that applied that one keep its recorded checksum.
 * `rollback:tenants` never undoes a `run` (it applied no migrations); see `rollback.ts`.
 *
 * The ledger tables are small (per-tenant rows are pruned by retention), so checking the new
 * constraints at once is a short scan.
 */
const KINDS = ['deploy', 'rollback', 'provision', 'lazy'];
const OUTCOMES = ['migrated', 'failed'];

export async function up(knex: Knex): Promise<void> {
  await replaceCheck(knex, 'tenant_migration_runs', 'tenant_migration_runs_kind_check', 'kind', [...KINDS, 'run']);
  await replaceCheck(knex, 'tenant_migration_run_tenants', 'tenant_migration_run_tenants_outcome_check', 'outcome', [
    ...OUTCOMES,
    'ran',
  ]);
}

export async function down(knex: Knex): Promise<void> {
  // The rows of `tenants:run` runs would break the old constraints: they go first.
  await knex.raw("delete from public.?? where kind = 'run'", ['tenant_migration_runs']);
  await replaceCheck(knex, 'tenant_migration_runs', 'tenant_migration_runs_kind_check', 'kind', KINDS);
  await replaceCheck(
    knex,
    'tenant_migration_run_tenants',
    'tenant_migration_run_tenants_outcome_check',
    'outcome',
    OUTCOMES,
  );
}

async function replaceCheck(
  knex: Knex,
  table: string,
  name: string,
  column: string,
  values: readonly string[],
): Promise<void> {
  await knex.raw('alter table public.?? drop constraint if exists ??', [table, name]);
  // DDL takes no parameters: the values are this file's own constants, written as literals.
  const list = values.map((v) => `'${v}'`).join(', ');
  await knex.raw(`alter table public.?? add constraint ?? check (?? in (${list}))`, [table, name, column]);
}
