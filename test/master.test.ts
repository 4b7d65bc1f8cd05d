import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openToolkit, type Toolkit } from '../src/index.ts';
import { startEngine, type TestEngine } from './support/engine.ts';

let engine: TestEngine;
let tk: Toolkit;

beforeAll(async () => {
  engine = await startEngine('master');
  tk = await openToolkit(engine.config());
});

afterAll(async () => {
  await tk?.close();
  await engine?.stop();
});

async function tables(): Promise<string[]> {
  const result = await tk.knex.raw(
    "select table_name from information_schema.tables where table_schema = 'public' order by 1",
  );
  return result.rows.map((r: { table_name: string }) => r.table_name);
}

describe('master migrations', () => {
  it('applies the shipped master migrations into public, in Knex format, then reports up to date', async () => {
    const first = await tk.migrateMaster();
    expect(first.error).toBeNull();
    expect(first.outcome).toBe('migrated');
    expect(first.migrations).toEqual([
      '20261121000001_create_tenants.ts',
      '20261121000002_create_focus_areas.ts',
      '20261121000003_create_coaching_categories.ts',
      '20261202000001_run_ledger.ts',
      '20261202000002_tenant_labels.ts',
      '20261202000003_tracking_trigger.ts',
      '20261202000010_ledger_tenants_run.ts',
      '20261202000011_tenant_lifecycle_statuses.ts',
      '20261203000001_tenant_servers.ts',
    ]);
    expect(await tables()).toEqual(
      expect.arrayContaining([
        'tenants',
        'focus_areas',
        'coaching_categories',
        'knex_migrations_master',
        'knex_migrations_master_lock',
      ]),
    );
    const history = await tk
      .knex('knex_migrations_master')
      .withSchema('public')
      .select('name', 'batch', 'migration_time')
      .orderBy('id');
    expect(history.map((r) => r.batch)).toEqual(first.migrations.map(() => 1));
    expect(history.every((r) => r.migration_time instanceof Date)).toBe(true);

    const second = await tk.migrateMaster();
    expect(second.outcome).toBe('up-to-date');
    expect(second.migrations).toEqual([]);
  });

  it('keeps the registry constraints the provisioner relies on', async () => {
    await tk.knex('tenants').insert({ clerk_org_id: 'org_a', schema_name: 'tid_a' });
    await expect(tk.knex('tenants').insert({ clerk_org_id: 'org_a', schema_name: 'tid_b' })).rejects.toThrow(/unique/i);
    await expect(tk.knex('tenants').insert({ clerk_org_id: 'org_c', schema_name: 'tid_a' })).rejects.toThrow(/unique/i);
    await expect(
      tk.knex('tenants').insert({ clerk_org_id: 'org_d', schema_name: 'tid_d', status: 'WEIRD' }),
    ).rejects.toThrow(/check/i);
    const row = await tk.knex('tenants').where({ clerk_org_id: 'org_a' }).first();
    expect(row.status).toBe('PROVISIONING');
    await tk.knex('tenants').delete();
  });

  it('rolls back the last batch, then migrates again', async () => {
    const down = await tk.rollbackMaster();
    expect(down.error).toBeNull();
    expect(down.migrations).toHaveLength(9);
    expect(await tables()).not.toContain('tenants');
    const count = await tk.knex('knex_migrations_master').withSchema('public').count<{ count: string }[]>('* as count');
    expect(Number(count[0]!.count)).toBe(0);

    const again = await tk.migrateMaster();
    expect(again.outcome).toBe('migrated');
    expect(await tables()).toContain('tenants');
  });
});
