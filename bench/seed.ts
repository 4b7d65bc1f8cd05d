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
  await seedSpreadFleet([{ server, database, name: null }], n);
}

/** One server's part of a bench fleet: the server, its bench database, its name in TENANT_SERVERS (null: main). */
export interface FleetPart {
  readonly server: Server;
  readonly database: string;
  readonly name: string | null;
}

/**
 * `seedFleet` with the tenants spread over `parts` (the first is the main server, which keeps
 * the registry): tenant i goes to part (i - 1) mod parts.length, round-robin, its registry row
 * naming that server and its schema created on that server's database.
 */
export async function seedSpreadFleet(parts: readonly FleetPart[], n: number): Promise<void> {
  const main = parts[0]!;
  await migrateMaster(main.server, main.database);
  await withClient(main, async (client) => {
    const spread = parts.length > 1;
    await client.query(
      `insert into public.tenants (clerk_org_id, schema_name, status${spread ? ', server' : ''})
       select 'org_bench_' || i, ${schemaOf('i')}, 'ACTIVE'${spread ? ', ($2::text[])[(i - 1) % cardinality($2::text[]) + 1]' : ''}
         from generate_series(1, $1::int) i`,
      spread ? [n, parts.map((p) => p.name)] : [n],
    );
  });
  for (const [index, part] of parts.entries()) {
    await withClient(part, async (client) => {
      for (let from = 1; from <= n; from += SCHEMA_CHUNK) {
        const to = Math.min(n, from + SCHEMA_CHUNK - 1);
        // DO takes no parameters; the bounds are integers we computed.
        await client.query(
          `do $$ declare s text; begin
             for s in select ${schemaOf('i')} from generate_series(${from}, ${to}) i
                       where (i - 1) % ${parts.length} = ${index} loop
               execute format('create schema %I', s);
             end loop;
           end $$`,
        );
      }
      await settle(client);
    });
  }
}

/** The toolkit's schema name of bench tenant `i` (an SQL expression), as `provisionTenant` derives it. */
const schemaOf = (i: string): string => `'tid_' || left(md5('org_bench_' || ${i}), 10)`;

async function withClient<T>(part: Pick<FleetPart, 'server' | 'database'>, cb: (client: pg.Client) => Promise<T>) {
  const client = await part.server.client(part.database);
  try {
    return await cb(client);
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
  await withClient({ server, database }, async (client) => {
    const schemas = await activeSchemas(client);
    if (schemas.length !== n) throw new Error(`incomplete run: ${schemas.length}/${n} ACTIVE tenants registered`);
    await verifySchemas(client, schemas, '');
  });
}

/**
 * `verifyFleet` for a fleet seeded by `seedSpreadFleet`: every server holds the schemas the
 * registry places on it, each complete, and the registry records each tenant's run (its
 * migrations digest, no error), written on the main server for tenants elsewhere. With one
 * part, the same checks for the whole fleet on the main server.
 */
export async function verifySpreadFleet(parts: readonly FleetPart[], n: number): Promise<void> {
  const placed = await withClient(parts[0]!, async (client) => {
    const result = await client.query<{ schema_name: string; server: string | null; booked: boolean }>(
      `select schema_name, server, last_migration_error is null and migrations_digest is not null as booked
         from public.tenants where status = 'ACTIVE' order by id`,
    );
    return result.rows;
  });
  const booked = placed.filter((row) => row.booked).length;
  if (placed.length !== n || booked !== n)
    throw new Error(
      `incomplete run: ${placed.length}/${n} ACTIVE tenants registered, ${booked}/${n} with the run recorded (digest, no error)`,
    );
  for (const part of parts) {
    const schemas = placed.filter((row) => row.server === part.name).map((row) => row.schema_name);
    const where = ` on ${part.name ?? 'main'} (${part.server.describe})`;
    await withClient(part, (client) => verifySchemas(client, schemas, where));
  }
  const known = new Set(parts.map((part) => part.name));
  const elsewhere = placed.filter((row) => !known.has(row.server)).length;
  if (elsewhere > 0)
    throw new Error(`incomplete run: ${elsewhere} tenants registered on servers the bench did not seed`);
}

/** Throws unless every schema of `schemas` on this connection's database has the bench migrations' end state. */
async function verifySchemas(client: pg.Client, schemas: readonly string[], where: string): Promise<void> {
  const n = schemas.length;
  const result = await client.query<{ messages: number; indexes: number }>(
    `select
       (select count(*)::int from pg_class c join pg_namespace s on s.oid = c.relnamespace
         where s.nspname = any($1::text[]) and c.relname = 'chat_messages') as messages,
       (select count(*)::int from pg_class c join pg_namespace s on s.oid = c.relnamespace
         where s.nspname = any($1::text[]) and c.relname = 'users_last_seen_idx') as indexes`,
    [schemas],
  );
  const row = result.rows[0]!;
  const settings = await countSettings(client, schemas);
  if (row.messages !== n || row.indexes !== n || settings !== 2 * n) {
    throw new Error(
      `incomplete run${where}: ${row.messages}/${n} chat_messages tables, ${row.indexes}/${n} indexes, ${settings}/${2 * n} backfilled settings rows`,
    );
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
