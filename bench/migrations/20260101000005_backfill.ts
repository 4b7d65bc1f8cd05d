import type { Knex } from 'knex';

/** A data migration: default settings for every tenant, and derived columns for existing users. */
export async function up(knex: Knex): Promise<void> {
  await knex('settings')
    .insert([
      { key: 'retention', value: JSON.stringify({ days: 365 }) },
      { key: 'features', value: JSON.stringify({ chat: true, exports: false }) },
    ])
    .onConflict('key')
    .ignore();
  await knex('users')
    .whereNull('display_name')
    .update({ display_name: knex.raw("split_part(email, '@', 1)") });
  await knex('users')
    .whereNull('last_seen_at')
    .update({ last_seen_at: knex.ref('created_at') });
}

export async function down(knex: Knex): Promise<void> {
  await knex('settings').whereIn('key', ['retention', 'features']).delete();
}
