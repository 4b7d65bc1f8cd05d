import type { Knex } from 'knex';

/** A shared lookup table in `public`, readable by every tenant through its search path. */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.withSchema('public').createTable('focus_areas', (table) => {
    table.increments('id').primary();
    table.string('slug', 64).notNullable().unique();
    table.string('label', 200).notNullable();
    table.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
  });
  await knex('focus_areas')
    .withSchema('public')
    .insert([
      { slug: 'leadership', label: 'Leadership' },
      { slug: 'communication', label: 'Communication' },
      { slug: 'wellbeing', label: 'Wellbeing' },
    ]);
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.withSchema('public').dropTable('focus_areas');
}
