import type { Knex } from 'knex';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { openToolkit, type Toolkit } from '../src/index.ts';
import type { FanoutReport } from '../src/migrations/fanout.ts';
import {
  deployed,
  deployFolder,
  masterFolder,
  orgIds,
  provisionAll,
  resetTenants,
  tablesIn,
  tracking,
  V1,
} from './fixtures/fan-kit/kit.ts';
import { type CliResult, folders, runCli as runChild } from './support/cli.ts';
import { startEngine, type TestEngine } from './support/engine.ts';

// Deploy safety (issue 12): a dry-run executes and rolls back, canaries, the failure budget,
// waves, labels, and the escape guard, on a real PostgreSQL (the server, or PGlite).

/** Tests that start the CLI: each child opens the database (on PGlite, the whole engine). */
const CLI_TIMEOUT = 300_000;

let engine: TestEngine;
let tk: Toolkit;
let master: string;

beforeAll(async () => {
  engine = await startEngine('safety');
  master = masterFolder();
  tk = await openToolkit(
    engine.config({ ...folders(master, deployFolder(V1)), TENANT_EXTENSIONS: '', DB_POOL_MAX: '3' }),
  );
  await tk.migrateMaster();
});

afterAll(async () => {
  await tk?.close();
  await engine?.stop();
});

beforeEach(async () => {
  await resetTenants(tk.knex);
});

/**
 * The CLI as a child process. The embedded engine is one process at a time: this file's own
 * toolkit lets go of the folder while the child runs, and opens it again after.
 */
async function runCli(args: readonly string[], env: Record<string, string>): Promise<CliResult> {
  if (engine.kind !== 'embedded') return runChild(args, env);
  const config = tk.config;
  await tk.close();
  try {
    return await runChild(args, env);
  } finally {
    tk = await openToolkit(config);
  }
}

/** Everything a run may write, as text: registry, ledger, checksums, tracking tables and the catalog. */
async function snapshot(knex: Knex): Promise<string> {
  const rows = async (sql: string): Promise<unknown[]> => (await knex.raw(sql)).rows;
  const schemas = (await rows(
    "select nspname from pg_namespace where nspname not like 'pg\\_%' and nspname <> 'information_schema' order by 1",
  )) as { nspname: string }[];
  const trackingTables: Record<string, unknown> = {};
  for (const { nspname } of schemas) {
    if (nspname.startsWith('tid_')) trackingTables[nspname] = await tracking(knex, nspname);
  }
  return JSON.stringify({
    tenants: await rows('select * from public.tenants order by id'),
    runs: await rows('select * from public.tenant_migration_runs order by id'),
    runTenants: await rows('select * from public.tenant_migration_run_tenants order by 1, 2'),
    checksums: await rows('select * from public.knex_migrations_checksums order by 1, 2'),
    trackingTables,
    catalog: await rows(
      `select n.nspname, c.relname, c.relkind, c.relnatts from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema' order by 1, 2`,
    ),
    functions: await rows(
      "select oid::regprocedure::text from pg_proc where pronamespace = 'public'::regnamespace order by 1",
    ),
    schemas,
  });
}

/** Gives a tenant two members with the same handle, so that 005_unique_handle fails there. */
async function duplicateHandles(schema: string): Promise<void> {
  await tk.knex
    .withSchema(schema)
    .table('members')
    .insert([{ handle: 'dup' }, { handle: 'dup' }]);
}

function byOrg(report: FanoutReport): Map<string, FanoutReport['tenants'][number]> {
  return new Map(report.tenants.map((t) => [t.orgId, t]));
}

describe('--dry-run', () => {
  it('runs each batch and rolls it back: reports exactly the tenant that would fail, writes nothing', async () => {
    const ids = orgIds('dry', 4);
    const schemas = await provisionAll(tk, ids);
    await duplicateHandles(schemas.get(ids[2]!)!);
    const before = await snapshot(tk.knex);

    const next = deployed(tk, [...V1, '004_member_email.ts', '005_unique_handle.ts']);
    const report = await next.migrateTenants({ dryRun: true });

    expect(await snapshot(tk.knex)).toBe(before);
    expect(report).toMatchObject({ dryRun: true, runId: null });
    expect(report.totals).toMatchObject({ 'would-migrate': 3, 'would-fail': 1, failed: 0, migrated: 0, total: 4 });
    const tenants = byOrg(report);
    expect(tenants.get(ids[2]!)).toMatchObject({
      outcome: 'would-fail',
      error: { migration: '005_unique_handle.ts', code: '23505' },
    });
    for (const id of [ids[0]!, ids[1]!, ids[3]!]) {
      expect(tenants.get(id)).toMatchObject({
        outcome: 'would-migrate',
        migrations: ['004_member_email.ts', '005_unique_handle.ts'],
      });
    }
  });

  it(
    'through the CLI: exit 1 when a tenant would fail, 0 otherwise; --json; --sql shows the statements',
    async () => {
      const ids = orgIds('drycli', 2);
      const schemas = await provisionAll(tk, ids);
      const env = {
        ...engine.env,
        ...folders(master, deployFolder([...V1, '004_member_email.ts'])),
        TENANT_EXTENSIONS: '',
      };
      const clean = await runCli(['migrate:tenants', '--dry-run', '--sql'], env);
      expect(clean.code, clean.stderr).toBe(0);
      expect(clean.stdout).toMatch(/alter table "members" add column "email" varchar\(255\)/);
      expect(clean.stdout).toMatch(/Dry run, nothing written: 2 tenants: 2 would migrate, 0 would fail/);

      await duplicateHandles(schemas.get(ids[1]!)!);
      const env2 = { ...env, ...folders(master, deployFolder([...V1, '005_unique_handle.ts'])) };
      const failing = await runCli(['migrate:tenants', '--dry-run', '--json'], env2);
      expect(failing.code, failing.stderr).toBe(1);
      const doc = JSON.parse(failing.stdout) as FanoutReport;
      expect(doc.totals).toMatchObject({ 'would-migrate': 1, 'would-fail': 1 });
      expect(await tracking(tk.knex, schemas.get(ids[0]!)!)).toHaveLength(2);
    },
    CLI_TIMEOUT,
  );

  it('does not execute transaction: false migrations: they are reported not-checked', async () => {
    const [id] = orgIds('drynt', 1);
    const schemas = await provisionAll(tk, [id!]);
    const before = await snapshot(tk.knex);
    const next = deployed(tk, [...V1, '004_member_email.ts', '006_concurrent_index.ts', '012_member_nickname.ts']);
    const report = await next.migrateTenants({ dryRun: true });
    expect(report.tenants[0]).toMatchObject({
      outcome: 'would-migrate',
      migrations: ['004_member_email.ts'],
      notChecked: ['006_concurrent_index.ts', '012_member_nickname.ts'],
    });
    expect(await snapshot(tk.knex)).toBe(before);
    expect(await tablesIn(tk.knex, schemas.get(id!)!)).not.toContain('members_handle_idx');
  });

  it('of provisioning and of a rollback: nothing is registered, created or rolled back', async () => {
    const [a, b] = orgIds('dryprov', 2);
    await provisionAll(tk, [a!]);
    const before = await snapshot(tk.knex);
    const provision = await tk.provisionTenant(b!, { dryRun: true });
    expect(provision).toMatchObject({ outcome: 'would-provision', migrations: [...V1], error: null });
    const rollback = await tk.rollbackTenants({ lastBatch: true, dryRun: true });
    expect(rollback.tenants[0]).toMatchObject({ outcome: 'would-migrate', migrations: [...V1].reverse() });
    expect(await snapshot(tk.knex)).toBe(before);
  });
});

describe('canaries, the failure budget and waves', () => {
  it(
    '--canary 1 with a failing canary migrates nothing else, exit 1, the summary names the canary',
    async () => {
      const ids = orgIds('canary', 4);
      const schemas = await provisionAll(tk, ids);
      await duplicateHandles(schemas.get(ids[0]!)!);
      const env = {
        ...engine.env,
        ...folders(master, deployFolder([...V1, '005_unique_handle.ts'])),
        TENANT_EXTENSIONS: '',
      };
      const result = await runCli(['migrate:tenants', '--canary', '1', '--json'], env);
      expect(result.code, result.stderr).toBe(1);
      const doc = JSON.parse(result.stdout) as FanoutReport;
      expect(doc).toMatchObject({ canaries: [ids[0]], stoppedBy: 'canary' });
      expect(doc.totals).toMatchObject({ migrated: 0, failed: 1, skipped: 3 });
      for (const id of ids.slice(1)) expect(await tracking(tk.knex, schemas.get(id)!)).toHaveLength(2);
    },
    CLI_TIMEOUT,
  );

  it('a passing canary (named with --canary-tenant) goes first, then the rest', async () => {
    const ids = orgIds('canok', 3);
    await provisionAll(tk, ids);
    const next = deployed(tk, [...V1, '004_member_email.ts']);
    const order: string[] = [];
    const report = await next.migrateTenants({ canaryTenants: [ids[2]!], onTenant: (r) => order.push(r.orgId) });
    expect(order[0]).toBe(ids[2]);
    expect(report).toMatchObject({ canaries: [ids[2]], stoppedBy: null });
    expect(report.totals).toMatchObject({ migrated: 3, failed: 0 });
  });

  it('--max-failures 2 stops after two failures; the rest are skipped and the ledger says failed', async () => {
    const ids = orgIds('budget', 6);
    const schemas = await provisionAll(tk, ids);
    for (const id of ids.slice(0, 3)) await duplicateHandles(schemas.get(id)!);
    const next = deployed(tk, [...V1, '005_unique_handle.ts']);
    const report = await next.migrateTenants({ maxFailures: { count: 2 }, concurrency: 1 });
    expect(report.stoppedBy).toBe('max-failures');
    expect(report.totals).toMatchObject({ failed: 2, migrated: 0, skipped: 4 });
    expect(report.tenants.filter((t) => t.outcome === 'skipped').map((t) => t.error?.message)).toEqual(
      Array(4).fill('not started: the failure budget (--max-failures 2) was spent'),
    );
    const run = await tk.run(report.runId!);
    expect(run?.outcome).toBe('failed');
  });

  it('--waves 1,50%,100%: successive waves; a wave with a failure ends the run', async () => {
    const ids = orgIds('waves', 4);
    const schemas = await provisionAll(tk, ids);
    const waves: number[] = [];
    const next = deployed(tk, [...V1, '004_member_email.ts']);
    const ok = await next.migrateTenants({
      waves: [{ count: 1 }, { percent: 50 }, { percent: 100 }],
      onWave: (_w, _n, size) => waves.push(size),
    });
    expect(waves).toEqual([1, 1, 2]);
    expect(ok.waves.map((w) => w.length)).toEqual([1, 1, 2]);
    expect(ok.totals.migrated).toBe(4);

    await duplicateHandles(schemas.get(ids[1]!)!);
    const failing = deployed(tk, [...V1, '004_member_email.ts', '005_unique_handle.ts']);
    const report = await failing.migrateTenants({ waves: [{ count: 1 }, { percent: 50 }, { percent: 100 }] });
    expect(report.stoppedBy).toBe('wave');
    expect(report.totals).toMatchObject({ migrated: 1, failed: 1, skipped: 2 });
  });
});

describe('labels', () => {
  it(
    'tenants:label sets them, --label selects by them, --canary label:<name> uses them as canaries',
    async () => {
      const ids = orgIds('label', 3);
      await provisionAll(tk, ids);
      const env = {
        ...engine.env,
        ...folders(master, deployFolder([...V1, '004_member_email.ts'])),
        TENANT_EXTENSIONS: '',
      };
      const labelled = await runCli(['tenants:label', ids[1]!, 'internal', 'canary'], env);
      expect(labelled.code, labelled.stderr).toBe(0);
      expect(labelled.stdout).toMatch(/canary, internal/);
      const bad = await runCli(['tenants:label', ids[1]!, 'no spaces'], env);
      expect(bad.code).toBe(2);

      const only = await runCli(['migrate:tenants', '--label', 'internal', '--json'], env);
      expect(only.code, only.stderr).toBe(0);
      const doc = JSON.parse(only.stdout) as FanoutReport;
      expect(doc.tenants.map((t) => t.orgId)).toEqual([ids[1]]);

      const next = deployed(tk, [...V1, '004_member_email.ts', '012_member_nickname.ts']);
      const report = await next.migrateTenants({ canaryLabel: 'canary' });
      expect(report.canaries).toEqual([ids[1]]);
      expect(report.totals.migrated).toBe(3);
    },
    CLI_TIMEOUT,
  );
});

describe('the escape guard', () => {
  it('refuses a migration that writes public, rolled back with nothing left anywhere', async () => {
    const ids = orgIds('escpub', 2);
    const schemas = await provisionAll(tk, ids);
    const before = await snapshot(tk.knex);
    const next = deployed(tk, [...V1, '004_member_email.ts', '013_public_audit.ts']);
    const report = await next.migrateTenants();
    expect(report.totals).toMatchObject({ failed: 2, migrated: 0 });
    expect(report.tenants[0]).toMatchObject({ error: { code: 'E_SCHEMA_ESCAPE' } });
    expect(report.tenants[0]!.escapes).toContainEqual({ kind: 'relation', name: 'public.escaped_audit' });
    expect(await tablesIn(tk.knex, 'public')).not.toContain('escaped_audit');
    for (const id of ids) expect(await tracking(tk.knex, schemas.get(id)!)).toHaveLength(2);
    // Only the last error and the ledger changed.
    const after = JSON.parse(await snapshot(tk.knex));
    const was = JSON.parse(before);
    expect(after.catalog).toEqual(was.catalog);
    expect(after.trackingTables).toEqual(was.trackingTables);
  });

  it("refuses a migration that writes another tenant's schema, and one that moves the search path", async () => {
    const ids = orgIds('escother', 2);
    const schemas = await provisionAll(tk, ids);
    const next = deployed(tk, [...V1, '014_other_tenant.ts']);
    const report = await next.migrateTenants();
    expect(report.totals).toMatchObject({ failed: 2, migrated: 0 });
    const escaped = report.tenants.flatMap((t) => t.escapes.map((e) => e.name));
    expect(escaped.some((name) => /^tid_[0-9a-f]+\.members$/.test(name))).toBe(true);
    for (const id of ids) {
      const planted = await tk.knex.withSchema(schemas.get(id)!).from('members').where({ handle: 'planted' });
      expect(planted).toEqual([]);
    }
    const moved = await deployed(tk, [...V1, '016_search_path.ts']).migrateTenants();
    expect(moved.totals.failed).toBe(2);
    expect(moved.tenants[0]!.escapes).toEqual([{ kind: 'search_path', name: 'public' }]);
  });

  it('refuses a function, a type and a schema created outside, found in the catalogs, with nothing left', async () => {
    const ids = orgIds('esccat', 2);
    await provisionAll(tk, ids);
    const report = await deployed(tk, [...V1, '017_catalog_escapes.ts']).migrateTenants();
    expect(report.totals).toMatchObject({ failed: 2, migrated: 0 });
    for (const tenant of report.tenants)
      expect(tenant.escapes).toEqual([
        { kind: 'function', name: 'escaped_fn()' },
        { kind: 'schema', name: 'escaped_side' },
        { kind: 'type', name: 'escaped_mood' },
      ]);
    const left = await tk.knex.raw(
      `select (select count(*) from pg_proc where proname = 'escaped_fn')::int as functions,
              (select count(*) from pg_type where typname = 'escaped_mood')::int as types,
              (select count(*) from pg_namespace where nspname = 'escaped_side')::int as schemas`,
    );
    expect(left.rows[0]).toEqual({ functions: 0, types: 0, schemas: 0 });
  });

  it('lets a migration that declares allowOutsideSchema through, and the report names it', async () => {
    const [id] = orgIds('escallow', 1);
    await provisionAll(tk, [id!]);
    const report = await deployed(tk, [...V1, '015_shared_function.ts']).migrateTenants();
    expect(report.totals.migrated).toBe(1);
    expect(report.tenants[0]!.unguarded).toEqual(['015_shared_function.ts']);
    await tk.knex.raw('drop function public.shared_touch()');
  });
});
