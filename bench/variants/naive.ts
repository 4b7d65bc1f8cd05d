import knexFactory from 'knex';
import { seedFleet, verifyFleet } from '../seed.ts';
import { BENCH_MIGRATIONS, type Server, withFreshDatabase } from '../server.ts';
import type { Measurement, Variant } from './types.ts';

/**
 * What public schema-per-tenant Knex projects do today: read the tenants, then for each in
 * turn a new Knex with the tenant schema on its search path and a one-connection pool,
 * `knex.migrate.latest` into that schema, destroy. Run in-process (a user's script would add
 * only its own start-up, well under a second).
 */
export async function naiveLoop(server: Server, database: string): Promise<void> {
  const registry = knexFactory(server.knexConfig(database, 1));
  let schemas: string[];
  try {
    const rows: { schema_name: string }[] = await registry('tenants')
      .withSchema('public')
      .where('status', 'ACTIVE')
      .orderBy('id')
      .select('schema_name');
    schemas = rows.map((r) => r.schema_name);
  } finally {
    await registry.destroy();
  }
  for (const schema of schemas) {
    const knex = knexFactory({ ...server.knexConfig(database, 1), searchPath: [schema, 'public'] });
    try {
      await knex.migrate.latest({
        directory: BENCH_MIGRATIONS,
        tableName: 'knex_migrations_tenant',
        schemaName: schema,
      });
    } finally {
      await knex.destroy();
    }
  }
}

export const naive: Variant = {
  name: 'naive',
  description: 'naive loop: a Knex per tenant, knex.migrate.latest, destroy',
  run: (ctx) =>
    withFreshDatabase(ctx.server, 'naive', async (database): Promise<Measurement[]> => {
      await seedFleet(ctx.server, database, ctx.tenants);
      let started = performance.now();
      await naiveLoop(ctx.server, database);
      const migrate = performance.now() - started;
      await verifyFleet(ctx.server, database, ctx.tenants);
      started = performance.now();
      await naiveLoop(ctx.server, database);
      const noop = performance.now() - started;
      return [
        { metric: 'migrate.naive', unit: 'ms', tenants: ctx.tenants, values: [migrate] },
        { metric: 'noop.naive', unit: 'ms', tenants: ctx.tenants, values: [noop] },
      ];
    }),
};
