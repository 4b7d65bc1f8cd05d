/**
 * Registry rows edited by hand into a bad state: a schema that does not exist, a status outside
 * the allowed set (possible once the CHECK constraint is dropped), a FAILED row, and a row that
 * points a tenant at `public`. Promise under test: status reports each for what it is, migrate
 * skips or fails it with a reason and goes on with the others (never crashing the run), and no
 * tenant migration ever runs outside a tenant schema.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BASE_DIR,
  cliEnv,
  hasStack,
  NEXT_DIR,
  publicTables,
  registryRows,
  setUpTenants,
  snapshot,
  versionOf,
  withTk,
} from '../fixtures/rel-support/support.ts';
import { runCli } from '../support/cli.ts';
import { startEngine, type TestEngine } from '../support/engine.ts';

const GHOST_SCHEMA = 'tid_0123456789';
let engine: TestEngine;
let publicBefore: string[];

beforeAll(async () => {
  engine = await startEngine('rel_bad_registry');
  await setUpTenants(engine, BASE_DIR, ['org_reg_ok', 'org_reg_archived', 'org_reg_failed']);
  await withTk(engine, BASE_DIR, async (tk) => {
    await tk.knex.raw('alter table public.tenants drop constraint tenants_status_check');
    await tk.knex('tenants').where('clerk_org_id', 'org_reg_archived').update({ status: 'ARCHIVED' });
    await tk.knex('tenants').where('clerk_org_id', 'org_reg_failed').update({ status: 'FAILED', error: 'set by hand' });
    await tk.knex('tenants').insert({ clerk_org_id: 'org_reg_ghost', schema_name: GHOST_SCHEMA, status: 'ACTIVE' });
    publicBefore = await publicTables(tk.knex);
  });
});

afterAll(async () => {
  await engine?.stop();
});

interface StatusRow {
  orgId: string;
  status: string;
  state: string;
  error: string | null;
}

describe('registry rows edited by hand', () => {
  it('status reports each for what it is (a missing schema, a status outside the set, FAILED)', async () => {
    const result = await runCli(['migrate:status', '--json'], cliEnv(engine, NEXT_DIR));
    expect(result.code).toBe(0);
    const report = JSON.parse(result.stdout) as { tenants: StatusRow[]; orphans: string[] };
    expect(report.tenants.map(({ orgId, status, state, error }) => ({ orgId, status, state, error }))).toEqual([
      { orgId: 'org_reg_ok', status: 'ACTIVE', state: 'behind', error: null },
      { orgId: 'org_reg_archived', status: 'ARCHIVED', state: 'not-active', error: null },
      { orgId: 'org_reg_failed', status: 'FAILED', state: 'failed', error: 'set by hand' },
      { orgId: 'org_reg_ghost', status: 'ACTIVE', state: 'schema-missing', error: null },
    ]);
    expect(report.orphans).toEqual([]);
  });

  it('migrate skips or fails them with a reason, migrates the others, and exits 1 after a full report', async () => {
    const result = await runCli(['migrate:tenants'], cliEnv(engine, NEXT_DIR));
    expect(hasStack(result.stdout + result.stderr)).toBe(false);
    expect(result.stderr).not.toMatch(/error:/);
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/4 tenants: 1 migrated, 0 up to date, 1 failed, 2 skipped/);
    expect(result.stdout).toContain(`org_reg_ghost (${GHOST_SCHEMA}): schema ${GHOST_SCHEMA} does not exist`);
    expect(result.stdout).toMatch(/skipped org_reg_archived \(tid_\w+\): status is ARCHIVED, not ACTIVE/);
    expect(result.stdout).toMatch(/skipped org_reg_failed \(tid_\w+\): status is FAILED, not ACTIVE/);
    await withTk(engine, NEXT_DIR, async (tk) => {
      const rows = await registryRows(tk.knex);
      const states = await snapshot(tk.knex);
      const version = (orgId: string) => versionOf(states.get(rows.find((r) => r.orgId === orgId)!.schema)!);
      expect([version('org_reg_ok'), version('org_reg_archived'), version('org_reg_failed')]).toEqual([
        'new',
        'old',
        'old',
      ]);
      expect(states.has(GHOST_SCHEMA)).toBe(false);
      expect(await publicTables(tk.knex)).toEqual(publicBefore);
      // The library never throws for them either, in either direction.
      const down = await tk.rollbackTenants({ lastBatch: true });
      expect(down.totals).toMatchObject({ migrated: 1, failed: 1, skipped: 2 });
      const up = await tk.migrateTenants();
      expect(up.totals).toMatchObject({ migrated: 1, failed: 1, skipped: 2 });
    });
  });

  it('a row pointing a tenant at public is refused: tenant migrations never run in public', async () => {
    await withTk(engine, NEXT_DIR, (tk) =>
      tk.knex('tenants').insert({ clerk_org_id: 'org_reg_public', schema_name: 'public', status: 'ACTIVE' }),
    );
    try {
      const result = await runCli(['migrate:tenants', '--tenant', 'org_reg_public'], cliEnv(engine, NEXT_DIR));
      expect(hasStack(result.stdout + result.stderr)).toBe(false);
      expect(result.code).toBe(1);
      expect(result.stdout).toMatch(/1 tenant: 0 migrated, 0 up to date, 1 failed, 0 skipped/);
      expect(result.stdout).toMatch(/org_reg_public \(public\): /);
      await withTk(engine, NEXT_DIR, async (tk) => {
        expect(await publicTables(tk.knex)).toEqual(publicBefore);
      });
    } finally {
      await withTk(engine, NEXT_DIR, async (tk) => {
        await tk.knex('tenants').where('clerk_org_id', 'org_reg_public').delete();
        // If the run did put tenant tables in public, take them out again for the other tests.
        await tk.knex.raw('drop table if exists public.tags, public.items, public.knex_migrations_tenant');
      });
    }
  });
});
