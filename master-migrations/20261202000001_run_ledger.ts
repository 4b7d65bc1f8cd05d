import type { Knex } from 'knex';

/**
 * The run ledger: one row per tenant migration run (a deploy, a rollback, a provisioning, a lazy
 * migration), and one row per tenant that a run changed, written in the same transaction as that
 * tenant's migrations. `rollback:tenants` reads it to undo exactly what one run applied.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.withSchema('public').createTable('tenant_migration_runs', (table) => {
    table.bigIncrements('id').primary();
    table.string('command', 64).notNullable();
    table
      .string('kind', 16)
      .notNullable()
      .checkIn(['deploy', 'rollback', 'provision', 'lazy'], 'tenant_migration_runs_kind_check');
    table.string('direction', 4).notNullable();
    table
      .string('outcome', 16)
      .notNullable()
      .defaultTo('running')
      .checkIn(['running', 'succeeded', 'failed', 'interrupted'], 'tenant_migration_runs_outcome_check');
    table.timestamp('started_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    table.timestamp('finished_at', { useTz: true }).nullable();
    table.timestamp('heartbeat_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    table.text('run_by').notNullable().defaultTo(knex.raw('current_user'));
    table.string('host', 255).notNullable();
    table.integer('pid').notNullable();
    table.string('toolkit_version', 32).notNullable();
    table.string('folder_digest', 32).notNullable();
    table.jsonb('flags').notNullable().defaultTo('{}');
    table.bigInteger('rolls_back').nullable().references('id').inTable('public.tenant_migration_runs');
    for (const column of ['total', 'migrated', 'up_to_date', 'failed', 'skipped']) {
      table.integer(column).notNullable().defaultTo(0);
    }
    table.index(['kind', 'id'], 'tenant_migration_runs_kind_idx');
    table.index(['started_at'], 'tenant_migration_runs_started_idx');
  });
  await knex.schema.withSchema('public').createTable('tenant_migration_run_tenants', (table) => {
    table
      .bigInteger('run_id')
      .notNullable()
      .references('id')
      .inTable('public.tenant_migration_runs')
      .onDelete('CASCADE');
    table.string('schema_name', 63).notNullable();
    table.string('org_id', 64).nullable();
    table
      .string('outcome', 16)
      .notNullable()
      .checkIn(['migrated', 'failed'], 'tenant_migration_run_tenants_outcome_check');
    table.string('direction', 4).notNullable();
    table.specificType('migrations', 'text[]').notNullable().defaultTo('{}');
    table.integer('batch').nullable();
    table.text('error').nullable();
    table.string('error_code', 32).nullable();
    table.string('failed_migration', 255).nullable();
    table.integer('duration_ms').notNullable().defaultTo(0);
    table.timestamp('recorded_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    table.primary(['run_id', 'schema_name']);
    table.index(['schema_name', 'run_id'], 'tenant_migration_run_tenants_schema_idx');
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.withSchema('public').dropTable('tenant_migration_run_tenants');
  await knex.schema.withSchema('public').dropTable('tenant_migration_runs');
}
