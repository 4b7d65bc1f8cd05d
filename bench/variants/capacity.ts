import type pg from 'pg';
import { runCommand } from '../cli.ts';
import { seedFleet } from '../seed.ts';
import { withFreshDatabase } from '../server.ts';
import { toolkitEnv } from './toolkit.ts';
import type { Measurement, Variant } from './types.ts';

/** Tenants of the capacity fleet (`--smoke`: 20): enough for per-tenant figures to be linear. */
const FLEET = { full: 1000, smoke: 20 };

/**
 * What one tenant schema costs a server, for the README's capacity note: catalog rows (`pg_class`
 * entries) and catalog bytes per migrated tenant (the bench migrations: 3 tables, their indexes,
 * sequences and the toolkit's tracking tables), and the memory a backend keeps per tenant schema
 * it has touched (relation and catalog caches, `pg_backend_memory_contexts`, PostgreSQL 14+):
 * one connection reads one table of every tenant and its memory is compared before and after.
 */
export const capacity: Variant = {
  name: 'capacity',
  description: 'per tenant schema: pg_class rows, catalog bytes, and backend memory after touching it',
  run: (ctx) =>
    withFreshDatabase(ctx.server, 'capacity', async (database): Promise<Measurement[]> => {
      const n = ctx.big <= 1000 ? FLEET.smoke : FLEET.full;
      const client = await ctx.server.client(database);
      try {
        const before = await catalog(client);
        await seedFleet(ctx.server, database, n);
        await runCommand(['migrate:tenants'], toolkitEnv(ctx.server, database));
        const after = await catalog(client);
        // A fresh connection: its caches hold nothing of the tenants yet.
        const reader = await ctx.server.client(database);
        try {
          const schemas = (
            await reader.query<{ s: string }>("select schema_name as s from public.tenants where status = 'ACTIVE'")
          ).rows.map((r) => r.s);
          const start = await backendBytes(reader);
          for (const schema of schemas) await reader.query(`select count(*) from "${schema}".users`);
          const touched = await backendBytes(reader);
          return [
            {
              metric: 'capacity.pg_class',
              unit: 'rows',
              tenants: n,
              values: [(after.relations - before.relations) / n],
            },
            { metric: 'capacity.catalog', unit: 'kB', tenants: n, values: [(after.bytes - before.bytes) / 1024 / n] },
            { metric: 'capacity.backend', unit: 'kB', tenants: n, values: [(touched - start) / 1024 / schemas.length] },
          ];
        } finally {
          await reader.end();
        }
      } finally {
        await client.end();
      }
    }),
};

/** Rows of `pg_class` and bytes of every catalog table (with indexes) in this database. */
async function catalog(client: pg.Client): Promise<{ relations: number; bytes: number }> {
  const result = await client.query<{ relations: string; bytes: string }>(
    `select (select count(*) from pg_class) as relations,
            (select sum(pg_total_relation_size(c.oid)) from pg_class c
              where c.relnamespace = 'pg_catalog'::regnamespace and c.relkind = 'r') as bytes`,
  );
  return { relations: Number(result.rows[0]!.relations), bytes: Number(result.rows[0]!.bytes) };
}

/** Memory this backend holds in its memory contexts. */
async function backendBytes(client: pg.Client): Promise<number> {
  const result = await client.query<{ bytes: string }>(
    'select sum(total_bytes) as bytes from pg_backend_memory_contexts',
  );
  return Number(result.rows[0]!.bytes);
}
