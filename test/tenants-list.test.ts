/**
 * `tenants:list`: the registry with each tenant's version, pending count, labels, last error and
 * times, filtered by status, label and `--behind`. Library calls in this process, and one run of
 * the real CLI for `--json` and one for the text table.
 */
import { copyFileSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openToolkit, type Toolkit } from '../src/index.ts';
import { masterFolder } from './fixtures/fan-kit/kit.ts';
import { type CliResult, folders, runCli } from './support/cli.ts';
import { FIXTURES, startEngine, type TestEngine } from './support/engine.ts';

const MIGRATIONS = path.join(FIXTURES, 'fleet-run', 'migrations');
const MASTER = masterFolder();
const V1 = folderOf(['001_items.ts']);
const V2 = folderOf(['001_items.ts', '002_notes.ts']);

let engine: TestEngine;

function folderOf(names: readonly string[]): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fleet-list-'));
  for (const name of names) copyFileSync(path.join(MIGRATIONS, name), path.join(dir, name));
  return dir;
}

async function withTk<T>(tenant: string, cb: (tk: Toolkit) => Promise<T>): Promise<T> {
  const tk = await openToolkit(
    engine.config({ MASTER_MIGRATIONS_DIR: MASTER, TENANT_MIGRATIONS_DIR: tenant, TENANT_EXTENSIONS: '' }),
  );
  try {
    return await cb(tk);
  } finally {
    await tk.close();
  }
}

function cli(args: readonly string[]): Promise<CliResult> {
  return runCli(args, { ...engine.env, ...folders(MASTER, V2), TENANT_EXTENSIONS: '' });
}

/**
 * Four tenants provisioned at V1: org_list_1 then migrated to V2 (up to date), org_list_2 and
 * org_list_3 labelled `beta` (behind), org_list_4 marked FAILED with an error.
 */
beforeAll(async () => {
  engine = await startEngine('tenants-list');
  await withTk(V1, async (tk) => {
    expect((await tk.migrateMaster()).error).toBeNull();
    for (const id of ['org_list_1', 'org_list_2', 'org_list_3', 'org_list_4']) {
      expect((await tk.provisionTenant(id)).error).toBeNull();
    }
    await tk.labelTenant('org_list_2', ['beta']);
    await tk.labelTenant('org_list_3', ['beta', 'internal']);
    await tk
      .knex('tenants')
      .withSchema('public')
      .where({ clerk_org_id: 'org_list_4' })
      .update({ status: 'FAILED', error: 'extension vector is not available' });
  });
  await withTk(V2, async (tk) => {
    expect((await tk.migrateTenants({ orgIds: ['org_list_1'] })).totals.migrated).toBe(1);
  });
});

afterAll(async () => {
  await engine?.stop();
});

describe('tenants:list', () => {
  it('lists every tenant with its version, pending count, labels, last error and times', async () => {
    const report = await withTk(V2, (tk) => tk.listTenantsReport());
    expect(report.registered).toBe(4);
    const rows = new Map(report.tenants.map((t) => [t.orgId, t]));
    expect([...rows.keys()]).toEqual(['org_list_1', 'org_list_2', 'org_list_3', 'org_list_4']);
    expect(rows.get('org_list_1')).toMatchObject({
      status: 'ACTIVE',
      state: 'up-to-date',
      version: '002_notes.ts',
      pending: 0,
      labels: [],
      lastError: null,
    });
    expect(rows.get('org_list_3')).toMatchObject({
      state: 'behind',
      version: '001_items.ts',
      pending: 1,
      labels: ['beta', 'internal'],
    });
    expect(rows.get('org_list_4')).toMatchObject({
      status: 'FAILED',
      version: null,
      lastError: 'extension vector is not available',
    });
    for (const row of report.tenants) {
      expect(row.schema).toMatch(/^tid_[0-9a-f]+$/);
      expect(Date.parse(row.createdAt)).not.toBeNaN();
    }
    // The ledger's newest migrating row: the deploy for org_list_1, provisioning for the others.
    const one = Date.parse(rows.get('org_list_1')!.lastMigratedAt!);
    const two = Date.parse(rows.get('org_list_2')!.lastMigratedAt!);
    expect(one).toBeGreaterThan(two);
  });

  it('filters by status, label and --behind (together: all of them)', async () => {
    await withTk(V2, async (tk) => {
      const orgs = async (o: Parameters<Toolkit['listTenantsReport']>[0]): Promise<string[]> =>
        (await tk.listTenantsReport(o)).tenants.map((t) => t.orgId);
      expect(await orgs({ statuses: ['failed'] })).toEqual(['org_list_4']);
      expect(await orgs({ statuses: ['ACTIVE'] })).toEqual(['org_list_1', 'org_list_2', 'org_list_3']);
      expect(await orgs({ labels: ['internal'] })).toEqual(['org_list_3']);
      expect(await orgs({ behind: true })).toEqual(['org_list_2', 'org_list_3']);
      expect(await orgs({ behind: true, labels: ['internal'] })).toEqual(['org_list_3']);
      // --verify reads tracking tables instead of digests: the same answer.
      expect(await orgs({ behind: true, verify: true })).toEqual(['org_list_2', 'org_list_3']);
    });
  });

  it('CLI: --json with filters, and the text table', async () => {
    const json = await cli(['tenants:list', '--label', 'beta', '--behind', '--json']);
    expect(json.code, json.stderr).toBe(0);
    const doc = JSON.parse(json.stdout);
    expect(doc).toMatchObject({
      command: 'tenants:list',
      registered: 4,
      filters: { statuses: [], labels: ['beta'], behind: true },
    });
    expect(doc.tenants.map((t: { orgId: string }) => t.orgId)).toEqual(['org_list_2', 'org_list_3']);
    expect(Object.keys(doc.tenants[0]).sort()).toEqual(
      [
        'orgId',
        'schema',
        'status',
        'state',
        'version',
        'pending',
        'labels',
        'lastError',
        'createdAt',
        'lastMigratedAt',
      ].sort(),
    );

    const text = await cli(['tenants:list', '--status', 'failed']);
    expect(text.code, text.stderr).toBe(0);
    const lines = text.stdout.trim().split('\n');
    expect(lines[0]).toMatch(
      /^ORG ID\s+SCHEMA\s+STATUS\s+VERSION\s+PENDING\s+LABELS\s+CREATED \(UTC\)\s+LAST MIGRATED/,
    );
    expect(lines[1]).toMatch(/^org_list_4\s+tid_\w+\s+FAILED\s+-\s+0\s+-\s+.*extension vector is not available$/);
    expect(lines.at(-1)).toBe('1 of 4 tenants');
  });
});
