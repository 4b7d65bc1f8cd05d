import pg from 'pg';
import { openToolkit } from '../src/toolkit.ts';
import { BENCH_MIGRATIONS, MASTER_MIGRATIONS, type Server } from './server.ts';

/** Schemas created per statement: keeps each transaction small whatever the fleet size. */
const SCHEMA_CHUNK = 1000;

/** The settings every toolkit run in the bench uses (as a user would put in `.env`). */
export function benchOverrides(): Record<string, string> {
  return { MASTER_MIGRATIONS_DIR: MASTER_MIGRATIONS, TENANT_MIGRATIONS_DIR: BENCH_MIGRATIONS, TENANT_EXTENSIONS: '' };
}

/** Applies the toolkit's master migrations (public.tenants and the shared tables), as `migrate:master` does. */
export async function migrateMaster(server: Server, database: string): Promise<void> {
  const toolkit = await openToolkit(server.configFor(database, benchOverrides()));
  try {
    const report = await toolkit.migrateMaster();
    if (report.error) throw new Error(`master migrations failed: ${report.error.message}`);
  } finally {
    await toolkit.close();
  }
}

/**
 * A fleet of `n` registered ACTIVE tenants with empty schemas, in a few statements: the state
 * after `n` organisations signed up before the five bench migrations existed. Schema names
 * follow the toolkit's naming (`tid_` + 10 hex digits of md5(org id)).
 */
export async function seedFleet(server: Server, database: string, n: number): Promise<void> {
  await migrateMaster(server, database);
  const client = await server.client(database);
  try {
    await client.query(
      `insert into public.tenants (clerk_org_id, schema_name, status)
       select 'org_bench_' || i, 'tid_' || left(md5('org_bench_' || i), 10), 'ACTIVE' from generate_series(1, $1::int) i`,
      [n],
    );
    for (let from = 1; from <= n; from += SCHEMA_CHUNK) {
      // DO takes no parameters; the bounds are integers we computed.
      await client.query(
        `do $$ declare s text; begin
           for s in select schema_name from public.tenants where id between ${from} and ${from + SCHEMA_CHUNK - 1} loop
             execute format('create schema %I', s);
           end loop;
         end $$`,
      );
    }
    await settle(client);
  } finally {
    await client.end();
  }
}

/** ACTIVE tenant schemas in registry order: what every variant iterates over. */
export async function activeSchemas(client: pg.Client): Promise<string[]> {
  const result = await client.query<{ schema_name: string }>(
    "select schema_name from public.tenants where status = 'ACTIVE' order by id",
  );
  return result.rows.map((r) => r.schema_name);
}

/** Statistics and a checkpoint after seeding, so that the timed run does not pay for the seed's writes. */
async function settle(client: pg.Client): Promise<void> {
  await client.query('analyze');
  // CHECKPOINT needs superuser or pg_checkpoint; without it the run is only a little noisier.
  await client.query('checkpoint').catch(() => undefined);
}

/**
 * Checks that a variant did the whole job on every tenant: the last table and index exist and
 * the backfill's two rows are there. Throws naming the shortfall, so no variant can look fast
 * by doing less.
 */
export async function verifyFleet(server: Server, database: string, n: number): Promise<void> {
  const client = await server.client(database);
  try {
    const result = await client.query<{ messages: number; indexes: number }>(
      `select
         (select count(*)::int from pg_class c join pg_namespace s on s.oid = c.relnamespace
           where s.nspname like 'tid\\_%' and c.relname = 'chat_messages') as messages,
         (select count(*)::int from pg_class c join pg_namespace s on s.oid = c.relnamespace
           where s.nspname like 'tid\\_%' and c.relname = 'users_last_seen_idx') as indexes`,
    );
    const row = result.rows[0]!;
    const schemas = await activeSchemas(client);
    const settings = await countSettings(client, schemas);
    if (row.messages !== n || row.indexes !== n || settings !== 2 * n) {
      throw new Error(
        `incomplete run: ${row.messages}/${n} chat_messages tables, ${row.indexes}/${n} indexes, ${settings}/${2 * n} backfilled settings rows`,
      );
    }
  } finally {
    await client.end();
  }
}

async function countSettings(client: pg.Client, schemas: readonly string[]): Promise<number> {
  let total = 0;
  for (let i = 0; i < schemas.length; i += 500) {
    const chunk = schemas.slice(i, i + 500);
    const union = chunk
      .map((s) => `select count(*)::int as n from ${pg.escapeIdentifier(s)}.settings`)
      .join(' union all ');
    const result = await client.query<{ n: number }>(`select coalesce(sum(n), 0)::int as n from (${union}) t`);
    total += result.rows[0]!.n;
  }
  return total;
}
