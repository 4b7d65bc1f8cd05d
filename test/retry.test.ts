/**
 * `tenants:retry` after a provisioning crash: a PROVISIONING row whose provisioner is gone (no
 * lock held) with a half-made schema resumes where it stopped; a FAILED tenant whose cause was
 * fixed is provisioned; a provisioning still running (its lock held, on a server) is left alone.
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createToolkit,
  folderSource,
  type Migration,
  type MigrationSource,
  openToolkit,
  schemaNameFor,
  type Toolkit,
} from '../src/index.ts';
import { LOCK_NAMESPACE, session } from './fixtures/rel-support/support.ts';
import { runCli } from './support/cli.ts';
import { FIXTURES, ROOT, startEngine, type TestEngine } from './support/engine.ts';

const PLAIN = path.join(FIXTURES, 'tenant-plain');
const FAILING = path.join(FIXTURES, 'prov-failing');
const MASTER = path.join(ROOT, 'master-migrations');

let engine: TestEngine;
let tk: Toolkit;

const env = (tenantDir: string): Record<string, string> => ({
  ...engine.env,
  MASTER_MIGRATIONS_DIR: MASTER,
  TENANT_MIGRATIONS_DIR: tenantDir,
  TENANT_EXTENSIONS: '',
  DB_POOL_MAX: '4',
});
const open = (): Promise<Toolkit> => openToolkit(engine.config(env(PLAIN)));

beforeAll(async () => {
  engine = await startEngine('retry');
  tk = await open();
  expect((await tk.migrateMaster()).error).toBeNull();
});

afterAll(async () => {
  await tk?.close();
  await engine?.stop();
});

function memoryMigration(name: string, up: (knex: Knex) => Promise<void>, transaction = true): Migration {
  const checksum = createHash('sha256').update(`memory:${name}:v1`).digest('hex');
  return { name, file: `memory:${name}`, checksum, transaction, up, down: undefined };
}

function sourceOf(migrations: readonly Migration[]): MigrationSource {
  return { load: async () => migrations };
}

async function rowOf(orgId: string): Promise<{ status: string; error: string | null; schema_name: string }> {
  return tk.knex('tenants').where({ clerk_org_id: orgId }).first();
}

describe('tenants:retry', () => {
  it('resumes a crashed provisioning (half-made schema, no lock), provisions a FAILED tenant once fixed, leaves a running one alone', async () => {
    // The cause: a table in public that the third migration needs, missing until the operator adds it.
    const needsLookup = memoryMigration('003_needs_lookup.ts', async (knex) => {
      await knex.raw('create view lookup_copy as select * from public.retry_lookup');
    });
    // A step outside a transaction: a failure (or a kill) after it leaves the schema half-made.
    const outside = memoryMigration(
      '002_outside.ts',
      async (knex) => {
        await knex.raw('create table outside_tx (id int)');
      },
      false,
    );
    const users = (await folderSource(PLAIN).load()).filter((m) => m.name === '001_users.ts');
    const migrations = [...users, outside, needsLookup];
    const fleet = createToolkit({ knex: tk.knex, config: tk.config, sources: { tenant: sourceOf(migrations) } });

    const failed = await fleet.provisionTenant('org_retry_failed');
    expect(failed.outcome).toBe('failed');
    // The crash: it committed 001 and 002 (step by step), then its process died: the row stays
    // PROVISIONING and nothing holds its lock.
    const crashed = await fleet.provisionTenant('org_retry_crashed');
    expect(crashed).toMatchObject({ outcome: 'failed', migrations: ['001_users.ts', '002_outside.ts'] });
    await tk
      .knex('tenants')
      .where({ clerk_org_id: 'org_retry_crashed' })
      .update({ status: 'PROVISIONING', error: null });

    // Still broken: both fail again, reported, nothing else changes.
    const broken = await fleet.retryTenants();
    expect(broken.totals).toMatchObject({ failed: 2, provisioned: 0, total: 2 });
    expect(broken.tenants.map((t) => [t.orgId, t.previousStatus, t.outcome])).toEqual([
      ['org_retry_failed', 'FAILED', 'failed'],
      ['org_retry_crashed', 'PROVISIONING', 'failed'],
    ]);
    expect(broken.tenants[0]?.error?.message).toMatch(/retry_lookup/);

    // A provisioning running right now (another session holds its lock): left alone.
    const running = 'org_retry_running';
    const holder = engine.multiSession ? await session(engine) : undefined;
    if (holder) {
      await tk
        .knex('tenants')
        .insert({ clerk_org_id: running, schema_name: schemaNameFor(running), status: 'PROVISIONING' });
      await holder.query('select pg_advisory_lock($1, hashtext($2))', [LOCK_NAMESPACE, schemaNameFor(running)]);
    }
    try {
      await tk.knex.raw('create table public.retry_lookup (id int)'); // the cause, fixed
      const fixed = await fleet.retryTenants();
      expect(fixed.tenants.map((t) => [t.orgId, t.previousStatus, t.outcome])).toEqual([
        ['org_retry_failed', 'FAILED', 'provisioned'],
        ['org_retry_crashed', 'FAILED', 'provisioned'],
        ...(holder ? [[running, 'PROVISIONING', 'in-progress']] : []),
      ]);
      // Both resumed from their half-made schemas: only what they lacked was applied.
      for (const t of fixed.tenants.slice(0, 2)) expect(t.migrations).toEqual(['003_needs_lookup.ts']);
      for (const orgId of ['org_retry_failed', 'org_retry_crashed']) {
        expect(await rowOf(orgId)).toMatchObject({ status: 'ACTIVE', error: null });
      }
      if (holder) expect((await rowOf(running)).status).toBe('PROVISIONING');
    } finally {
      if (holder) {
        await holder.query('select pg_advisory_unlock($1, hashtext($2))', [LOCK_NAMESPACE, schemaNameFor(running)]);
        await holder.end();
        await tk.knex('tenants').where({ clerk_org_id: running }).delete();
      }
    }
    expect((await fleet.retryTenants()).tenants).toEqual([]);
  });

  it('on the command line: exit 1 while a tenant still fails, 0 once it is provisioned; --json', async () => {
    const orgId = 'org_retry_cli';
    const failing = createToolkit({ knex: tk.knex, config: tk.config, sources: { tenant: folderSource(FAILING) } });
    expect((await failing.provisionTenant(orgId)).outcome).toBe('failed');
    if (!engine.multiSession) await tk.close(); // PGlite: one process at a time
    try {
      const still = await runCli(['tenants:retry'], env(FAILING));
      expect(still.code).toBe(1);
      expect(still.stdout).toContain(`${orgId} (${schemaNameFor(orgId)}, was FAILED): FAILED: `);
      expect(still.stdout).toMatch(/1 tenant: 0 provisioned, 0 already active, 1 failed, 0 in progress/);
      const fixed = await runCli(['tenants:retry', '--json'], env(PLAIN));
      expect(fixed.stderr).not.toMatch(/error/i);
      expect(fixed.code).toBe(0);
      const report = JSON.parse(fixed.stdout);
      expect(report).toMatchObject({ command: 'tenants:retry', totals: { provisioned: 1, failed: 0, total: 1 } });
      expect(report.tenants[0]).toMatchObject({ orgId, outcome: 'provisioned', previousStatus: 'FAILED' });
    } finally {
      if (!engine.multiSession) tk = await open();
    }
  });
});
