import type pg from 'pg';
import type { Statement } from '../capture.ts';
import { activeSchemas, seedFleet, verifyFleet } from '../seed.ts';
import { type Server, withFreshDatabase } from '../server.ts';
import type { Measurement, Variant } from './types.ts';

/**
 * One tenant's migrations with nothing else: the captured statements in one transaction,
 * the tenant schema first on a transaction-local search path. No lock, no tracking table.
 */
export async function migrateRaw(
  client: pg.Client,
  schema: string,
  statements: readonly Statement[],
  createSchema = false,
): Promise<void> {
  await client.query('begin');
  try {
    if (createSchema) await client.query(`create schema ${client.escapeIdentifier(schema)}`);
    await client.query(`set local search_path to ${client.escapeIdentifier(schema)}, public`);
    for (const s of statements) await client.query(s.sql, [...s.bindings]);
    await client.query('commit');
  } catch (error) {
    await client.query('rollback').catch(() => undefined);
    throw error;
  }
}

/**
 * The floor: the same SQL sent raw by `connections` workers (the toolkit's default
 * concurrency, DB_POOL_MAX), one transaction per tenant. Timed from connecting to the last
 * commit, reading the tenant list included, as the toolkit's run is.
 */
export async function floorRun(
  server: Server,
  database: string,
  statements: readonly Statement[],
  connections: number,
): Promise<void> {
  const clients = await Promise.all(Array.from({ length: connections }, () => server.client(database)));
  try {
    const schemas = await activeSchemas(clients[0]!);
    let next = 0;
    await Promise.all(
      clients.map(async (client) => {
        while (next < schemas.length) await migrateRaw(client, schemas[next++]!, statements);
      }),
    );
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
}

export const floor: Variant = {
  name: 'floor',
  description: 'floor: the same SQL sent raw, one transaction per tenant, DB_POOL_MAX connections',
  run: (ctx) =>
    withFreshDatabase(ctx.server, 'floor', async (database): Promise<Measurement[]> => {
      await seedFleet(ctx.server, database, ctx.tenants);
      const started = performance.now();
      await floorRun(ctx.server, database, ctx.statements, ctx.server.poolMax);
      const ms = performance.now() - started;
      await verifyFleet(ctx.server, database, ctx.tenants);
      return [{ metric: 'migrate.floor', unit: 'ms', tenants: ctx.tenants, values: [ms] }];
    }),
};
