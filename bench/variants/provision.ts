import { openToolkit } from '../../src/toolkit.ts';
import { benchOverrides, migrateMaster } from '../seed.ts';
import { withFreshDatabase } from '../server.ts';
import { migrateRaw } from './floor.ts';
import type { Measurement, Variant } from './types.ts';

/**
 * Provisioning latency as an application sees it: one toolkit (one pool) open, then
 * `provisionTenant` for new organisations one after another, each call timed. One warm-up
 * call first (loading the migration files), not counted, as for the floor.
 */
export const provision: Variant = {
  name: 'provision',
  description: 'provisionTenant, in-process, one organisation at a time',
  run: (ctx) =>
    withFreshDatabase(ctx.server, 'provision', async (database): Promise<Measurement[]> => {
      await migrateMaster(ctx.server, database);
      const toolkit = await openToolkit(ctx.server.configFor(database, benchOverrides()));
      const values: number[] = [];
      try {
        for (let i = 0; i <= ctx.provisions; i++) {
          const started = performance.now();
          const report = await toolkit.provisionTenant(`org_prov_${i}`);
          const ms = performance.now() - started;
          if (report.outcome !== 'provisioned')
            throw new Error(`provisioning org_prov_${i}: ${report.outcome} ${report.error?.message ?? ''}`);
          if (i > 0) values.push(ms);
        }
      } finally {
        await toolkit.close();
      }
      return [{ metric: 'provision.toolkit', unit: 'ms', tenants: 1, values }];
    }),
};

/** The floor for one tenant: create the schema and run the same SQL in one transaction, on an open connection. */
export const provisionFloor: Variant = {
  name: 'provision-floor',
  description: 'floor for one tenant: create schema + the same SQL, one transaction',
  run: (ctx) =>
    withFreshDatabase(ctx.server, 'provfloor', async (database): Promise<Measurement[]> => {
      await migrateMaster(ctx.server, database);
      const client = await ctx.server.client(database);
      const values: number[] = [];
      try {
        for (let i = 0; i <= ctx.provisions; i++) {
          const started = performance.now();
          await migrateRaw(client, `tid_prov_${i}`, ctx.statements, true);
          if (i > 0) values.push(performance.now() - started);
        }
      } finally {
        await client.end();
      }
      return [{ metric: 'provision.floor', unit: 'ms', tenants: 1, values }];
    }),
};
