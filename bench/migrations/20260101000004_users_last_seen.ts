import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.schema.alterTable('users', (t) => {
    t.timestamp('last_seen_at', { useTz: true });
    t.index(['last_seen_at'], 'users_last_seen_idx');
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.alterTable('users', (t) => {
    t.dropIndex(['last_seen_at'], 'users_last_seen_idx');
    t.dropColumn('last_seen_at');
  });
}
