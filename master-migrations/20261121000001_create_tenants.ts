import type { Knex } from 'knex';

/** The tenant registry: one row per Clerk organisation, the source of truth for its schema name. */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.withSchema('public').createTable('tenants', (table) => {
    table.bigIncrements('id').primary();
    table.string('clerk_org_id', 64).notNullable().unique();
    table.string('schema_name', 63).notNullable().unique();
    table
      .string('status', 16)
      .notNullable()
      .defaultTo('PROVISIONING')
      .checkIn(['PROVISIONING', 'ACTIVE', 'FAILED'], 'tenants_status_check');
    table.text('error').nullable().comment('Why provisioning failed (status FAILED)');
    table.text('last_migration_error').nullable().comment('Why the last tenant migration run failed here');
    table
      .string('migrations_digest', 32)
      .nullable()
      .comment('md5 of the sorted names applied in the tenant schema, written with its tracking rows');
    table.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    table.timestamp('updated_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    table.index(['status'], 'tenants_status_idx');
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.withSchema('public').dropTable('tenants');
}
