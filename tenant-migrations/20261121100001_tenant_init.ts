import type { Knex } from 'knex';
import 'pgvector/knex';

/**
 * Runs with the tenant schema first on the search path and `public` after it, so the
 * unqualified `chat_messages` lands in the tenant schema and `vector` resolves to the
 * pgvector type installed in `public`.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('chat_messages', (table) => {
    table.bigIncrements('id').primary();
    table.string('author_user_id', 64).notNullable();
    table.text('content').notNullable();
    // Added by pgvector/knex: a vector(1536) column.
    (table as unknown as { vector(name: string, dimensions: number): Knex.ColumnBuilder }).vector('embedding', 1536);
    table.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
  });
  await knex.raw('create index ?? on ?? using hnsw (?? vector_cosine_ops)', [
    'chat_messages_embedding_hnsw',
    'chat_messages',
    'embedding',
  ]);
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('chat_messages');
}
