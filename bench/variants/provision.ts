import type pg from 'pg';
import { openToolkit } from '../../src/toolkit.ts';
import type { Statement } from '../capture.ts';
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

/**
 * Two floors for one tenant, measured alternately in the same loop on one open connection:
 * - `provision.floor`: `CREATE SCHEMA` and the same SQL in one transaction, nothing else;
 * - `provision.floor.booked`: what any correct provisioner must also write, in raw SQL with the
 *   fewest round trips: the registry row (committed first, so that a crash leaves a trace), then
 *   one transaction with the schema, Knex's tracking table and its lock table (as `knex
 *   migrate:latest` creates them), the same SQL, the tracking rows and the registry row set ACTIVE.
 *   No lock, no escape guard, no ledger, no digest: the toolkit's price for those is the ratio.
 */
export const provisionFloor: Variant = {
  name: 'provision-floor',
  description: 'floors for one tenant: create schema + the same SQL; and with registry and tracking rows',
  run: (ctx) =>
    withFreshDatabase(ctx.server, 'provfloor', async (database): Promise<Measurement[]> => {
      await migrateMaster(ctx.server, database);
      const client = await ctx.server.client(database);
      const bare: number[] = [];
      const booked: number[] = [];
      try {
        for (let i = 0; i <= ctx.provisions; i++) {
          let started = performance.now();
          await migrateRaw(client, `tid_prov_${i}`, ctx.statements, true);
          if (i > 0) bare.push(performance.now() - started);
          started = performance.now();
          await provisionRaw(client, `org_floor_${i}`, `tid_provb_${i}`, ctx.statements);
          if (i > 0) booked.push(performance.now() - started);
        }
      } finally {
        await client.end();
      }
      return [
        { metric: 'provision.floor', unit: 'ms', tenants: 1, values: bare },
        { metric: 'provision.floor.booked', unit: 'ms', tenants: 1, values: booked },
      ];
    }),
};

/** The bench's migrations, as the tracking table names them (the floor records as many rows). */
const MIGRATIONS = 5;

export async function provisionRaw(
  client: pg.Client,
  orgId: string,
  schema: string,
  statements: readonly Statement[],
): Promise<void> {
  const s = client.escapeIdentifier(schema);
  await client.query(`insert into public.tenants (clerk_org_id, schema_name, status) values ($1, $2, 'PROVISIONING')`, [
    orgId,
    schema,
  ]);
  await client.query('begin');
  try {
    await client.query(
      `create schema ${s};
       create table ${s}."knex_migrations_tenant" ("id" serial primary key, "name" varchar(255), "batch" integer, "migration_time" timestamptz);
       create table ${s}."knex_migrations_tenant_lock" ("index" serial primary key, "is_locked" integer);
       insert into ${s}."knex_migrations_tenant_lock" ("index", "is_locked") values (1, 0);
       set local search_path to ${s}, public`,
    );
    for (const st of statements) await client.query(st.sql, [...st.bindings]);
    const rows = Array.from({ length: MIGRATIONS }, (_, i) => `($${i + 1}, 1, now())`);
    await client.query(
      `insert into ${s}."knex_migrations_tenant" (name, batch, migration_time) values ${rows.join(', ')}`,
      Array.from({ length: MIGRATIONS }, (_, i) => `migration_${i + 1}`),
    );
    await client.query(`update public.tenants set status = 'ACTIVE', updated_at = now() where clerk_org_id = $1`, [
      orgId,
    ]);
    await client.query('commit');
  } catch (error) {
    await client.query('rollback').catch(() => undefined);
    throw error;
  }
}
