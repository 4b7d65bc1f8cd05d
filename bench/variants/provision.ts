import type pg from 'pg';
import { openToolkit, type Toolkit } from '../../src/toolkit.ts';
import type { Statement } from '../capture.ts';
import { benchOverrides, migrateMaster } from '../seed.ts';
import { withFreshDatabase } from '../server.ts';
import { migrateRaw } from './floor.ts';
import type { Measurement, Variant } from './types.ts';

/**
 * Provisioning latency as an application sees it, against two floors, interleaved tenant by
 * tenant in ONE database (so that all three pay for the same catalog size, the same autovacuum
 * and the same background load): one toolkit (one pool) open and one plain `pg` connection;
 * for each new organisation, in turn:
 * - `provision.toolkit`: `provisionTenant`, timed as the caller sees it;
 * - `provision.floor`: `CREATE SCHEMA` and the same SQL in one transaction, nothing else;
 * - `provision.floor.booked`: what any correct provisioner must also write, in raw SQL with the
 *   fewest round trips: the registry row (committed first, so that a crash leaves a trace), then
 *   one transaction with the schema, Knex's tracking table and its lock table (as `knex
 *   migrate:latest` creates them), the same SQL, the tracking rows and the registry row set ACTIVE.
 *   No lock, no escape guard, no ledger, no digest: the toolkit's price for those is the ratio.
 * - `provision.noguard`: `provisionTenant` with `ESCAPE_GUARD=off` (a second toolkit): what the
 *   escape guard costs a new tenant (context, not a target).
 * One warm-up round first (loading the migration files), not counted.
 */
export const provision: Variant = {
  name: 'provision',
  description: 'provisionTenant, in-process, one organisation at a time, interleaved with its two raw-SQL floors',
  run: (ctx) =>
    withFreshDatabase(ctx.server, 'provision', async (database): Promise<Measurement[]> => {
      await migrateMaster(ctx.server, database);
      const toolkit = await openToolkit(ctx.server.configFor(database, benchOverrides()));
      const unguarded = await openToolkit(ctx.server.configFor(database, { ...benchOverrides(), ESCAPE_GUARD: 'off' }));
      const client = await ctx.server.client(database);
      const values = { toolkit: [] as number[], bare: [] as number[], booked: [] as number[], noguard: [] as number[] };
      try {
        for (let i = 0; i <= ctx.provisions; i++) {
          // The order rotates, so that no series always runs right after the same other one.
          const provisioned = (tk: Toolkit, orgId: string, into: number[]) => async () => {
            const report = await tk.provisionTenant(orgId);
            if (report.outcome !== 'provisioned')
              throw new Error(`provisioning ${orgId}: ${report.outcome} ${report.error?.message ?? ''}`);
            return into;
          };
          const steps = [
            provisioned(toolkit, `org_prov_${i}`, values.toolkit),
            provisioned(unguarded, `org_provng_${i}`, values.noguard),
            async () => {
              await migrateRaw(client, `tid_prov_${i}`, ctx.statements, true);
              return values.bare;
            },
            async () => {
              await provisionRaw(client, `org_floor_${i}`, `tid_provb_${i}`, ctx.statements);
              return values.booked;
            },
          ];
          for (let k = 0; k < steps.length; k++) {
            const started = performance.now();
            const into = await steps[(i + k) % steps.length]!();
            if (i > 0) into.push(performance.now() - started);
          }
        }
      } finally {
        await client.end();
        await toolkit.close();
        await unguarded.close();
      }
      return [
        { metric: 'provision.toolkit', unit: 'ms', tenants: 1, values: values.toolkit },
        { metric: 'provision.floor', unit: 'ms', tenants: 1, values: values.bare },
        { metric: 'provision.floor.booked', unit: 'ms', tenants: 1, values: values.booked },
        { metric: 'provision.noguard', unit: 'ms', tenants: 1, values: values.noguard },
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
