import type { Knex } from 'knex';

/** A second shared lookup table in `public`. */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.withSchema('public').createTable('coaching_categories', (table) => {
    table.increments('id').primary();
    table.string('slug', 64).notNullable().unique();
    table.string('label', 200).notNullable();
    table.integer('sort_order').notNullable().defaultTo(0);
    table.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
  });
  await knex('coaching_categories')
    .withSchema('public')
    .insert([
      { slug: 'career', label: 'Career growth', sort_order: 1 },
      { slug: 'performance', label: 'Performance', sort_order: 2 },
    ]);
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.withSchema('public').dropTable('coaching_categories');
}
