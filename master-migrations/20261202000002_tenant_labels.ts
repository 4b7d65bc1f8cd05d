import type { Knex } from 'knex';
// migrate-lint-disable index-not-concurrent -- public.tenants has one row per tenant: a plain build takes milliseconds

/**
 * Tenant labels (e.g. `canary`, `internal`, a plan tier): `--label` selects tenants by them in
 * every fan-out command, and `--canary label:<name>` makes them the canary wave.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.withSchema('public').alterTable('tenants', (table) => {
    table.specificType('labels', 'text[]').notNullable().defaultTo('{}');
  });
  await knex.raw('create index tenants_labels_idx on public.tenants using gin (labels)');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('drop index if exists public.tenants_labels_idx');
  await knex.schema.withSchema('public').alterTable('tenants', (table) => {
    table.dropColumn('labels');
  });
}
