import knexFactory, { type Knex } from 'knex';
import type pg from 'pg';
import { createTenantClient, type TenantClient } from '../../src/runtime/client.ts';
import { openToolkit } from '../../src/toolkit.ts';
import { benchOverrides, migrateMaster } from '../seed.ts';
import { withFreshDatabase } from '../server.ts';
import type { Measurement, Variant } from './types.ts';

/** Tenants the calls are spread over, and calls per mode and round. */
const TENANTS = 50;
const ROUNDS = 5;
/** `--smoke`: enough to check the variant works. */
const SMOKE = { tenants: 10, rounds: 1 };

type Mode = 'raw' | 'knex' | 'unchecked' | 'checked' | 'roles';

/**
 * The runtime's cost per `withTenant` call against two floors, on one pool of `DB_POOL_MAX`
 * connections, each call one `select` in one tenant; first one caller (`runtime.<mode>`: the
 * round trip of one call), then as many callers as connections (`runtime.<mode>.pool`):
 * - `raw`: `BEGIN`, `set_config('search_path', …, true)`, the select, `COMMIT`, sent with `pg` on
 *   a connection taken from the same Knex pool (the four round trips any correct scoping needs);
 * - `knex`: the same transaction written by hand with Knex, as an application would without the
 *   toolkit (`knex.transaction`, then `trx.raw` twice): what Knex itself costs;
 * - `unchecked`: `withTenant` with `checkSession: false` (the runtime before the session check);
 * - `checked`: `withTenant` as shipped (the session check folded into the scoping and the COMMIT);
 * - `roles`: `withTenant` with `tenantRoles: true` (`TENANT_ROLES=on`: also `SET LOCAL ROLE`).
 * Modes are interleaved, ROUNDS times; each value is the mean ms per call of one batch.
 *
 * Measured (docs/isolation.md, *Cost*; medians of three runs on a 2-core VM, pool 10): one
 * caller, `knex` 1.32× `raw`, `checked` 0.97× `knex` (1.30× `raw`), `roles` 1.02×; ten callers,
 * `knex` 1.94× `raw`, `checked` 1.24× `knex` (2.60× `raw`), `roles` 1.21×. `knex` costs more than
 * `raw` (a Knex instance built per transaction, a Runner per query); `withTenant` sends one round
 * trip fewer than `knex` (BEGIN goes with its scoping), and what it adds under load is mostly its
 * session check.
 */
export const runtime: Variant = {
  name: 'runtime',
  description:
    'withTenant per call (unchecked, checked, with tenant roles) against raw BEGIN; set_config; SELECT; COMMIT and the same transaction by hand in Knex',
  run: (ctx) =>
    withFreshDatabase(ctx.server, 'runtime', async (database): Promise<Measurement[]> => {
      await migrateMaster(ctx.server, database);
      const smoke = ctx.big <= 1000;
      const tenants = smoke ? SMOKE.tenants : TENANTS;
      const rounds = smoke ? SMOKE.rounds : ROUNDS;
      const run = `${process.pid.toString(36)}${Date.now().toString(36)}`;
      const appRole = `bench_app_${run}`;
      // On the server's own database: it must outlive the bench database to drop the roles.
      const admin = await ctx.server.client(ctx.server.adminDatabase);
      const knex = knexFactory(ctx.server.knexConfig(database, ctx.server.poolMax));
      const schemas: string[] = [];
      try {
        // The bench's own user runs the runtime; the application role only receives the memberships.
        await admin.query(`create role ${appRole} nologin`);
        const toolkit = await openToolkit(
          ctx.server.configFor(database, { ...benchOverrides(), TENANT_ROLES: 'on', TENANT_APP_ROLE: appRole }),
        );
        const orgIds = Array.from({ length: tenants }, (_, i) => `org_rt_${run}_${i}`);
        try {
          for (const orgId of orgIds) {
            const report = await toolkit.provisionTenant(orgId);
            if (report.error) throw new Error(`provisioning ${orgId}: ${report.error.message}`);
            schemas.push(report.schema);
          }
        } finally {
          await toolkit.close();
        }
        const calls = smoke ? 50 : Math.max(200, ctx.provisions * 10);
        const clients: Record<Exclude<Mode, 'raw' | 'knex'>, TenantClient> = {
          unchecked: createTenantClient({ knex, checkSession: false }),
          checked: createTenantClient({ knex }),
          roles: createTenantClient({ knex, tenantRoles: true }),
        };
        const one = async (mode: Mode, i: number): Promise<void> => {
          const k = i % tenants;
          if (mode === 'raw') return raw(knex, schemas[k]!);
          if (mode === 'knex') return byHand(knex, schemas[k]!);
          await clients[mode].withTenant(orgIds[k]!, (trx) => trx.raw('select count(*) from users'));
        };
        const modes: Mode[] = ['raw', 'knex', 'unchecked', 'checked', 'roles'];
        const results: Measurement[] = [];
        // One caller: the round trip of one call. As many callers as connections: the pool under load.
        for (const [suffix, workers] of [
          ['', 1],
          ['.pool', ctx.server.poolMax],
        ] as const) {
          const values: Record<Mode, number[]> = { raw: [], knex: [], unchecked: [], checked: [], roles: [] };
          for (const mode of modes) await batch(calls / 4, workers, (i) => one(mode, i)); // warm-up
          for (let r = 0; r < rounds; r++) {
            for (let m = 0; m < modes.length; m++) {
              const mode = modes[(m + r) % modes.length]!;
              values[mode].push(await batch(calls, workers, (i) => one(mode, i)));
            }
          }
          for (const mode of modes)
            results.push({ metric: `runtime.${mode}${suffix}`, unit: 'ms', tenants, values: values[mode] });
        }
        return results;
      } finally {
        await knex.destroy();
        // Dropped here already (withFreshDatabase's drop is then a no-op): the roles hold privileges in it.
        await ctx.server.dropDatabase(database).catch(() => undefined);
        // Roles are cluster-wide: they outlive the database unless dropped.
        for (const role of [...schemas.map((s) => `${s}_app`), appRole])
          await admin.query(`drop role if exists "${role}"`).catch(() => undefined);
        await admin.end();
      }
    }),
};

/** The floor: four round trips on a connection of the same pool. */
async function raw(knex: Knex, schema: string): Promise<void> {
  const pool = knex.client as unknown as {
    acquireConnection(): Promise<pg.Client>;
    releaseConnection(c: pg.Client): Promise<void>;
  };
  const conn = await pool.acquireConnection();
  try {
    await conn.query('BEGIN');
    await conn.query(`select set_config('search_path', $1, true)`, [`"${schema}", public`]);
    await conn.query('select count(*) from users');
    await conn.query('COMMIT');
  } finally {
    await pool.releaseConnection(conn);
  }
}

/** What an application writes without the toolkit: the same transaction through Knex. */
async function byHand(knex: Knex, schema: string): Promise<void> {
  await knex.transaction(async (trx) => {
    await trx.raw(`select set_config('search_path', ?, true)`, [`"${schema}", public`]);
    await trx.raw('select count(*) from users');
  });
}

/** `calls` calls by `workers` callers at once; mean ms per call. */
async function batch(calls: number, workers: number, fn: (i: number) => Promise<void>): Promise<number> {
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: workers }, async () => {
      while (next < calls) await fn(next++);
    }),
  );
  return (performance.now() - started) / calls;
}
