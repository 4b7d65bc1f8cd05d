import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('org_users', (table) => {
    table.bigIncrements('id').primary();
    table.string('clerk_user_id', 64).notNullable().unique();
    table.string('email', 320).notNullable();
    table.string('role', 32).notNullable().defaultTo('member');
    table.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('org_users');
}
