/**
 * The run ledger and rollbacks scoped to a run (issue: a rollback after a partial deploy must
 * never touch a tenant that did not take part), plus the per-tenant unit's bookkeeping fixes.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createToolkit, openToolkit, RollbackRefusedError, type Toolkit } from '../src/index.ts';
import {
  deployed,
  deployFolder,
  orgIds,
  provisionAll,
  resetTenants,
  tablesIn,
  tracking,
  V1,
} from './fixtures/fan-kit/kit.ts';
import { startEngine, type TestEngine } from './support/engine.ts';

let engine: TestEngine;
let tk: Toolkit;

beforeAll(async () => {
  engine = await startEngine('ledger');
  tk = await openToolkit(
    engine.config({ TENANT_MIGRATIONS_DIR: deployFolder(V1), TENANT_EXTENSIONS: '', DB_POOL_MAX: '3' }),
  );
  expect((await tk.migrateMaster()).error).toBeNull();
});

afterAll(async () => {
  await tk?.close();
  await engine?.stop();
});

beforeEach(async () => {
  await resetTenants(tk.knex);
});

async function memberCount(schema: string): Promise<number> {
  const result = await tk.knex.raw('select count(*)::int as n from ??.members', [schema]);
  return result.rows[0].n;
}

describe('rollback:tenants after a partial deploy', () => {
  it('rolls back only the tenants the run migrated; the failed one keeps its tables and rows; twice is a no-op', async () => {
    const ids = orgIds('partial', 3);
    const schemas = await provisionAll(tk, ids);
    const [a, b, c] = ids.map((id) => schemas.get(id)!) as [string, string, string];
    // Tenant b alone has duplicate handles, so the unique index of 005 fails there only.
    for (const schema of [a, b, c]) await tk.knex.raw("insert into ??.members (handle) values ('x'), ('y')", [schema]);
    await tk.knex.raw("insert into ??.members (handle) values ('x')", [b]);
    const deploy = await deployed(tk, [...V1, '005_unique_handle.ts']).migrateTenants();
    expect(deploy.totals).toMatchObject({ migrated: 2, failed: 1 });

    const back = await deployed(tk, [...V1, '005_unique_handle.ts']).rollbackTenants();
    expect(back.totals).toMatchObject({ migrated: 2, failed: 0, skipped: 1 });
    expect(back.tenants.find((t) => t.schema === b)).toMatchObject({
      outcome: 'skipped',
      error: { message: expect.stringMatching(new RegExp(`^run ${deploy.runId} failed on it`)) },
    });
    // The failed tenant's base batch is intact: its tables and its customers' rows.
    expect(await tablesIn(tk.knex, b)).toEqual(expect.arrayContaining(['members', 'settings']));
    expect(await memberCount(b)).toBe(3);
    expect((await tracking(tk.knex, b)).map((r) => r.name)).toEqual([...V1]);
    for (const schema of [a, c]) expect((await tracking(tk.knex, schema)).map((r) => r.name)).toEqual([...V1]);

    // The ledger: the deploy failed (1 of 3), the rollback names the run it undid.
    const runs = await tk.runs();
    expect(runs.slice(0, 2)).toMatchObject([
      { id: back.runId, kind: 'rollback', rollsBack: deploy.runId, outcome: 'succeeded', counts: { migrated: 2 } },
      { id: deploy.runId, kind: 'deploy', outcome: 'failed', counts: { migrated: 2, failed: 1, total: 3 } },
    ]);
    const detail = await tk.run(deploy.runId!);
    expect(detail!.tenants.find((t) => t.schema === b)).toMatchObject({
      outcome: 'failed',
      failedMigration: '005_unique_handle.ts',
      migrations: [],
    });

    // Rolling back again never rolls back more than the first time: nothing left of that run.
    const again = await deployed(tk, [...V1, '005_unique_handle.ts']).rollbackTenants();
    expect(again.totals).toMatchObject({ migrated: 0, 'up-to-date': 2, skipped: 1 });
    for (const schema of [a, b, c]) expect((await tracking(tk.knex, schema)).map((r) => r.name)).toEqual([...V1]);
  });

  it('a --tenant run and a tenant provisioned after it: only the run’s tenant is rolled back', async () => {
    const ids = orgIds('scoped', 3);
    const schemas = await provisionAll(tk, ids.slice(0, 2));
    const v2 = deployed(tk, [...V1, '004_member_email.ts']);
    const run = await v2.migrateTenants({ orgIds: [ids[0]!] });
    expect(run.totals).toMatchObject({ migrated: 1, total: 1 });
    // Provisioned after the run, with the new folder: its base batch already holds 004.
    const late = await v2.provisionTenant(ids[2]!);
    expect(late.migrations).toContain('004_member_email.ts');

    const back = await v2.rollbackTenants();
    expect(back.totals).toMatchObject({ migrated: 1, skipped: 2 });
    expect((await tracking(tk.knex, schemas.get(ids[0]!)!)).map((r) => r.name)).toEqual([...V1]);
    expect((await tracking(tk.knex, schemas.get(ids[1]!)!)).map((r) => r.name)).toEqual([...V1]);
    expect((await tracking(tk.knex, late.schema)).map((r) => r.name)).toEqual([...V1, '004_member_email.ts']);
    // Provisioning is a run too, hidden from the default history.
    expect((await tk.runs()).some((r) => r.kind === 'provision')).toBe(false);
    expect((await tk.runs({ all: true })).some((r) => r.kind === 'provision')).toBe(true);
  });

  it('--run <id> is refused (exit 2, nothing written) while a later run sits on top; --cascade rolls both back', async () => {
    const ids = orgIds('cascade', 2);
    const schemas = await provisionAll(tk, ids);
    const first = await deployed(tk, [...V1, '003_path_probe.ts']).migrateTenants();
    const v3 = deployed(tk, [...V1, '003_path_probe.ts', '004_member_email.ts']);
    const second = await v3.migrateTenants();
    expect(second.totals.migrated).toBe(2);
    const before = await Promise.all(ids.map((id) => tracking(tk.knex, schemas.get(id)!)));

    const refused = await v3.rollbackTenants({ run: first.runId! }).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(RollbackRefusedError);
    expect((refused as RollbackRefusedError).exitCode).toBe(2);
    expect((refused as Error).message).toMatch(new RegExp(`${ids[0]} \\(run ${second.runId}\\)`));
    expect(await Promise.all(ids.map((id) => tracking(tk.knex, schemas.get(id)!)))).toEqual(before);

    const cascade = await v3.rollbackTenants({ run: first.runId!, cascade: true });
    expect(cascade.totals).toMatchObject({ migrated: 2, failed: 0 });
    for (const id of ids) expect((await tracking(tk.knex, schemas.get(id)!)).map((r) => r.name)).toEqual([...V1]);
  });

  it('two concurrent deploys each record only what they themselves applied', async () => {
    const ids = orgIds('race', 6);
    await provisionAll(tk, ids);
    const files = [...V1, '004_member_email.ts'];
    const [one, two] = await Promise.all([deployed(tk, files).migrateTenants(), deployed(tk, files).migrateTenants()]);
    const rows = [...(await tk.run(one.runId!))!.tenants, ...(await tk.run(two.runId!))!.tenants];
    expect(rows.map((r) => r.orgId).sort()).toEqual([...ids].sort());
    expect(one.totals.migrated + two.totals.migrated).toBe(ids.length);
    expect((await tk.run(one.runId!))!.tenants).toHaveLength(one.totals.migrated);
  });

  it('a no-op rerun writes one run row and no tenant row', async () => {
    await provisionAll(tk, orgIds('noop', 4));
    const run = await tk.migrateTenants();
    expect(run.totals['up-to-date']).toBe(4);
    const detail = await tk.run(run.runId!);
    expect(detail).toMatchObject({ outcome: 'succeeded', counts: { total: 4, upToDate: 4 } });
    expect(detail!.tenants).toEqual([]);
  });

  it('--last-batch keeps the old behaviour, explicitly', async () => {
    const schemas = await provisionAll(tk, orgIds('lastbatch', 1));
    const back = await tk.rollbackTenants({ lastBatch: true });
    expect(back.totals.migrated).toBe(1);
    expect(await tracking(tk.knex, [...schemas.values()][0]!)).toEqual([]);
  });
});

describe('the per-tenant unit’s bookkeeping', () => {
  it('provisioning an ACTIVE tenant that is behind records no checksum of its pending files', async () => {
    await provisionAll(tk, orgIds('behind', 1));
    await tk.knex.raw("delete from public.knex_migrations_checksums where name = '004_member_email.ts'");
    const v2 = deployed(tk, [...V1, '004_member_email.ts']);
    expect((await v2.provisionTenant(orgIds('behind', 1)[0]!)).outcome).toBe('already-active');
    const names = await tk.knex('knex_migrations_checksums').withSchema('public').pluck('name');
    expect(names).not.toContain('004_member_email.ts');
    expect(names).toEqual(expect.arrayContaining([...V1]));
  });

  it('a transaction: false migration failing during provisioning is named in the report and the registry', async () => {
    const dir = deployFolder(V1);
    writeFileSync(
      path.join(dir, '003_bad_concurrent.ts'),
      "export const config = { transaction: false };\nexport async function up(knex: { raw(sql: string): Promise<unknown> }): Promise<void> {\n  await knex.raw('create index concurrently nope_idx on no_such_table (id)');\n}\n",
    );
    const custom = createToolkit({ knex: tk.knex, config: { ...tk.config, tenantMigrationsDir: dir } });
    {
      const failed = await custom.provisionTenant('org_nontx_fail2');
      expect(failed).toMatchObject({
        outcome: 'failed',
        migrations: [...V1],
        error: { migration: '003_bad_concurrent.ts' },
      });
      const row = await tk.knex('tenants').withSchema('public').where({ clerk_org_id: 'org_nontx_fail2' }).first();
      expect(row).toMatchObject({
        status: 'FAILED',
        error: expect.stringMatching(/^003_bad_concurrent\.ts \(up\) failed/),
      });
      // What the README says is left: the steps that committed, tracked, and nothing else.
      expect((await tracking(tk.knex, failed.schema)).map((r) => r.name)).toEqual([...V1]);
    }
  });

  it('a lazily migrated tenant gets its registry digest, so later runs do not read it again', async () => {
    const { createTenantClient, folderSource, digestOf } = await import('../src/index.ts');
    const [id] = orgIds('lazy', 1) as [string];
    await provisionAll(tk, [id]);
    const files = [...V1, '004_member_email.ts'];
    const client = createTenantClient({ knex: tk.knex, migrations: folderSource(deployFolder(files)) });
    await client.withTenant(id, async () => undefined);
    const row = await tk.knex('tenants').withSchema('public').where({ clerk_org_id: id }).first('migrations_digest');
    expect(row.migrations_digest).toBe(digestOf(files));
  });

  it('a long-lived toolkit sees a registry that went away and came back (capabilities are not cached stale)', async () => {
    const [id] = orgIds('stale', 1) as [string];
    await provisionAll(tk, [id]);
    await resetTenants(tk.knex);
    expect((await tk.rollbackMaster({ all: true })).error).toBeNull();
    await expect(tk.provisionTenant(id)).rejects.toMatchObject({ code: 'E_REGISTRY_MISSING' });
    expect((await tk.migrateMaster()).error).toBeNull();
    expect((await tk.provisionTenant(id)).outcome).toBe('provisioned');
  });
});
