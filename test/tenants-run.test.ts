/**
 * `tenants:run`: a SQL file or a module run in every selected tenant with a migration's
 * machinery (lock, transaction-local search path, one transaction each, escape guard, failure
 * budget, dry-run, ledger). Most checks call the library in this process; two run the real CLI
 * (exit code, `--json`, text), with the toolkit closed meanwhile (the embedded engine admits one
 * process at a time).
 */
import { copyFileSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { LOCK_NAMESPACE } from '../src/db/locks.ts';
import { openToolkit, type Toolkit } from '../src/index.ts';
import { masterFolder, resetTenants } from './fixtures/fan-kit/kit.ts';
import { type CliResult, folders, runCli } from './support/cli.ts';
import { FIXTURES, startEngine, type TestEngine } from './support/engine.ts';

const HERE = path.join(FIXTURES, 'fleet-run');
const FILES = path.join(HERE, 'files');
const MASTER = masterFolder();
const TENANT = folderOf(['001_items.ts']);
const IDS = ['org_run_01', 'org_run_02', 'org_run_03'];
/** The tenant whose `items` table is dropped: every run that reads it fails there. */
const BROKEN = 'org_run_02';

let engine: TestEngine;
/** The in-process tests' toolkit, closed before the CLI tests (the embedded engine admits one process). */
let tk: Toolkit | undefined;
let schemas: Map<string, string>;

function folderOf(names: readonly string[]): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fleet-run-'));
  for (const name of names) copyFileSync(path.join(HERE, 'migrations', name), path.join(dir, name));
  return dir;
}

function open(extra: Record<string, string> = {}): Promise<Toolkit> {
  return openToolkit(
    engine.config({ MASTER_MIGRATIONS_DIR: MASTER, TENANT_MIGRATIONS_DIR: TENANT, TENANT_EXTENSIONS: '', ...extra }),
  );
}

/** Runs `cb` with the shared toolkit. */
function withTk<T>(cb: (tk: Toolkit) => Promise<T>): Promise<T> {
  if (!tk) throw new Error('the shared toolkit is closed');
  return cb(tk);
}

function cli(args: readonly string[]): Promise<CliResult> {
  return runCli(args, { ...engine.env, ...folders(MASTER, TENANT), TENANT_EXTENSIONS: '' });
}

async function items(tk: Toolkit, orgId: string): Promise<{ name: string; qty: number }[]> {
  return tk.knex.withSchema(schemas.get(orgId)!).from('items').select('name', 'qty').orderBy('id');
}

/** Three tenants, provisioned once. */
beforeAll(async () => {
  engine = await startEngine('tenants-run');
  tk = await open();
  expect((await tk.migrateMaster()).error).toBeNull();
  await resetTenants(tk.knex);
  schemas = new Map();
  for (const id of IDS) {
    const report = await tk.provisionTenant(id);
    expect(report.error).toBeNull();
    schemas.set(id, report.schema);
  }
});

afterAll(async () => {
  await tk?.close();
  await engine?.stop();
});

/** Every tenant ACTIVE with two items; BROKEN without its `items` table; nothing in public. */
async function resetData(toolkit: Toolkit): Promise<void> {
  const knex = toolkit.knex;
  await knex.raw('drop table if exists public.fleet_run_log');
  await knex('tenants').withSchema('public').whereIn('clerk_org_id', IDS).update({ status: 'ACTIVE' });
  for (const id of IDS) {
    const schema = schemas.get(id)!;
    await knex.raw('drop table if exists ??.items', [schema]);
    await knex.raw('create table ??.items (id serial primary key, name text not null, qty int not null default 0)', [
      schema,
    ]);
    await knex
      .withSchema(schema)
      .into('items')
      .insert([
        { name: 'a', qty: 1 },
        { name: 'b', qty: 2 },
      ]);
  }
  await knex.raw('drop table ??.items', [schemas.get(BROKEN)!]);
}

describe('tenants:run', () => {
  beforeEach(() => withTk(resetData));

  it('runs a SQL file in every tenant, reports the failing one, keeps the others, and records a ledger run', async () => {
    await withTk(async (tk) => {
      const report = await tk.runAcrossTenants(path.join(FILES, 'backfill.sql'));
      expect(report.totals).toEqual({ ran: 2, failed: 1, skipped: 0, total: 3 });
      const byOrg = new Map(report.tenants.map((t) => [t.orgId, t]));
      for (const id of IDS.filter((i) => i !== BROKEN)) {
        // count(*) is a bigint: a string, as the driver gives it; 9007199254740993 keeps every digit.
        expect(byOrg.get(id)).toMatchObject({
          outcome: 'ran',
          rows: [{ n: '3', total: 6, big: '9007199254740993' }],
          rowCount: 1,
          capped: false,
          error: null,
        });
        expect(await items(tk, id)).toEqual([
          { name: 'a', qty: 2 },
          { name: 'b', qty: 3 },
          { name: 'from-sql; with a semicolon', qty: 1 },
        ]);
      }
      const broken = byOrg.get(BROKEN)!;
      expect(broken.outcome).toBe('failed');
      expect(broken.error).toMatchObject({ code: '42P01' });
      expect(broken.error?.message).toMatch(/^line 2: relation "items" does not exist/);

      expect(report.runId).not.toBeNull();
      const run = await tk.run(report.runId!);
      expect(run).toMatchObject({ command: 'tenants:run', kind: 'run', outcome: 'failed' });
      expect(run?.counts).toMatchObject({ total: 3, migrated: 2, failed: 1 });
      expect(run?.tenants.map((t) => [t.orgId, t.outcome, t.migrations]).sort()).toEqual([
        ['org_run_01', 'ran', ['backfill.sql']],
        ['org_run_02', 'failed', ['backfill.sql']],
        ['org_run_03', 'ran', ['backfill.sql']],
      ]);
      expect((await tk.runs()).map((r) => r.id)).toContain(report.runId);
      // A run applied no migrations: rollback:tenants refuses it rather than guess.
      await expect(tk.rollbackTenants({ run: report.runId! })).rejects.toThrow(/is a tenants:run/);
      // Nor is a run taken for the last deploy.
      await expect(tk.rollbackTenants()).rejects.toThrow(/No deploy run/);
    });
  });

  it("runs a TypeScript module's run(knex, tenant) in its transaction; --status selects, others are skipped", async () => {
    await withTk(async (tk) => {
      await tk.knex('tenants').withSchema('public').where({ clerk_org_id: 'org_run_03' }).update({ status: 'FAILED' });
      const report = await tk.runAcrossTenants(path.join(FILES, 'report.ts'));
      expect(report.kind).toBe('module');
      expect(report.totals).toEqual({ ran: 1, failed: 1, skipped: 1, total: 3 });
      const byOrg = new Map(report.tenants.map((t) => [t.orgId, t]));
      expect(byOrg.get('org_run_01')).toMatchObject({
        outcome: 'ran',
        rows: [{ name: 'module:org_run_01', qty: 7 }],
      });
      expect(byOrg.get(BROKEN)?.error?.message).toMatch(/relation "items" does not exist/);
      expect(byOrg.get('org_run_03')).toMatchObject({ outcome: 'skipped', error: { code: 'E_SKIPPED' } });
      expect(byOrg.get('org_run_03')?.error?.message).toContain('status is FAILED, not ACTIVE');

      const both = await tk.runAcrossTenants(path.join(FILES, 'report.ts'), {
        statuses: ['active', 'failed'],
        orgIds: ['org_run_01', 'org_run_03'],
      });
      expect(both.totals).toEqual({ ran: 2, failed: 0, skipped: 0, total: 2 });
      expect((await items(tk, 'org_run_01')).filter((i) => i.name.startsWith('module:'))).toHaveLength(2);
    });
  });

  it('turns what a module returns into JSON-safe rows (CommonJS; one row { result } for a value)', async () => {
    await withTk(async (tk) => {
      const report = await tk.runAcrossTenants(path.join(FILES, 'scalar.cjs'), { orgIds: ['org_run_01'] });
      expect(report.tenants[0]?.rows).toEqual([
        { result: { schema: schemas.get('org_run_01'), same: true, big: '12345678901234567890' } },
      ]);
      expect(JSON.parse(JSON.stringify(report)).tenants[0].rows).toEqual(report.tenants[0]?.rows);
    });
  });

  it('caps the rows kept per tenant and says so', async () => {
    await withTk(async (tk) => {
      const file = path.join(FILES, 'many-rows.sql');
      const report = await tk.runAcrossTenants(file, { orgIds: ['org_run_01'] });
      // The last statement that returns rows is the select (the update after it returns none).
      expect(report.tenants[0]).toMatchObject({ rowCount: 150, capped: true });
      expect(report.tenants[0]?.rows).toHaveLength(100);
      expect(report.tenants[0]?.rows?.[99]).toEqual({ n: 100, label: 'row 100' });
      const five = await tk.runAcrossTenants(file, { orgIds: ['org_run_01'], rowLimit: 5 });
      expect(five.tenants[0]?.rows).toHaveLength(5);
    });
  });

  it('--dry-run runs in every tenant, reports, and leaves nothing behind (no data, no ledger run)', async () => {
    await withTk(async (tk) => {
      const runsBefore = await tk.runs({ all: true });
      const report = await tk.runAcrossTenants(path.join(FILES, 'backfill.sql'), { dryRun: true });
      expect(report.dryRun).toBe(true);
      expect(report.runId).toBeNull();
      expect(report.totals).toEqual({ ran: 0, failed: 0, skipped: 0, 'would-run': 2, 'would-fail': 1, total: 3 });
      expect(report.tenants.find((t) => t.orgId === 'org_run_01')?.rows).toEqual([
        { n: '3', total: 6, big: '9007199254740993' },
      ]);
      expect(await items(tk, 'org_run_01')).toEqual([
        { name: 'a', qty: 1 },
        { name: 'b', qty: 2 },
      ]);
      expect(await tk.runs({ all: true })).toEqual(runsBefore);
      await expect(
        tk.runAcrossTenants(path.join(FILES, 'backfill.sql'), { dryRun: true, transaction: false }),
      ).rejects.toThrow(/--dry-run needs a transaction/);
    });
  });

  it('refuses a tenant whose run writes outside its schema (rolled back) unless allowOutsideSchema', async () => {
    await withTk(async (tk) => {
      await tk.knex.raw('create table public.fleet_run_log (schema text)');
      const file = path.join(FILES, 'escape.sql');
      const refused = await tk.runAcrossTenants(file, { orgIds: ['org_run_01', 'org_run_03'] });
      expect(refused.totals.failed).toBe(2);
      for (const tenant of refused.tenants) {
        expect(tenant.error?.code).toBe('E_SCHEMA_ESCAPE');
        expect(tenant.escapes).toContainEqual({ kind: 'relation', name: 'public.fleet_run_log' });
      }
      expect((await tk.knex.raw('select count(*)::int as n from public.fleet_run_log')).rows[0].n).toBe(0);
      // The write inside the schema went with it.
      expect(await items(tk, 'org_run_01')).toHaveLength(2);

      const allowed = await tk.runAcrossTenants(file, {
        orgIds: ['org_run_01', 'org_run_03'],
        allowOutsideSchema: true,
      });
      expect(allowed.guarded).toBe(false);
      expect(allowed.totals.ran).toBe(2);
      const logged = await tk.knex.raw('select schema from public.fleet_run_log order by 1');
      expect(logged.rows.map((r: { schema: string }) => r.schema)).toEqual(
        [schemas.get('org_run_01'), schemas.get('org_run_03')].sort(),
      );
    });
  });

  it('--no-transaction runs statements one by one with the search path set for the session, then resets it', async () => {
    // One pooled connection (the embedded engine has only one): the query after the run is sure
    // to get the connection the run used.
    const single = engine.multiSession ? await open({ DB_POOL_MAX: '1' }) : tk!;
    try {
      await (async (tk: Toolkit) => {
        const before = (await tk.knex.raw('show search_path')).rows[0].search_path;
        const file = path.join(FILES, 'concurrent-index.sql');
        const inTransaction = await tk.runAcrossTenants(file, { orgIds: ['org_run_01'] });
        expect(inTransaction.tenants[0]?.error?.message).toMatch(/cannot run inside a transaction block/);

        const report = await tk.runAcrossTenants(file, { orgIds: ['org_run_01', 'org_run_03'], transaction: false });
        expect(report).toMatchObject({ transaction: false, guarded: false });
        expect(report.totals.ran).toBe(2);
        for (const tenant of report.tenants) {
          expect(tenant.rows).toEqual([{ search_path: `"${schemas.get(tenant.orgId)}", public` }]);
        }
        const index = await tk.knex.raw('select count(*)::int as n from pg_indexes where indexname = ?', [
          'items_name_idx',
        ]);
        expect(index.rows[0].n).toBe(2);
        const after = await tk.knex.raw('show search_path');
        expect(after.rows[0].search_path).toBe(before);
        const run = await tk.run(report.runId!);
        expect(run?.tenants.map((t) => t.outcome)).toEqual(['ran', 'ran']);
      })(single);
    } finally {
      if (single !== tk) await single.close();
    }
  });

  it('refuses what it cannot run before touching a tenant: a file without run(), an unknown tenant', async () => {
    await withTk(async (tk) => {
      const before = await tk.runs({ all: true });
      await expect(tk.runAcrossTenants(path.join(FILES, 'no-run.mjs'))).rejects.toMatchObject({ code: 'E_RUN_FILE' });
      await expect(
        tk.runAcrossTenants(path.join(FILES, 'backfill.sql'), { orgIds: ['org_nobody'] }),
      ).rejects.toMatchObject({
        code: 'E_UNKNOWN_TENANT',
      });
      expect(await tk.runs({ all: true })).toEqual(before);
    });
  });

  it("waits for the tenant's migration lock (a migration and a run of one tenant queue)", async (context) => {
    if (!engine.multiSession) context.skip();
    const holder = new pg.Client({ connectionString: engine.url });
    await holder.connect();
    try {
      await holder.query('begin');
      await holder.query('select pg_advisory_xact_lock($1, hashtext($2))', [LOCK_NAMESPACE, schemas.get('org_run_01')]);
      await withTk(async (tk) => {
        let done = false;
        const running = tk
          .runAcrossTenants(path.join(FILES, 'backfill.sql'), { orgIds: ['org_run_01'] })
          .finally(() => (done = true));
        await new Promise((resolve) => setTimeout(resolve, 400));
        expect(done).toBe(false);
        await holder.query('commit');
        expect((await running).totals.ran).toBe(1);
      });
    } finally {
      await holder.end();
    }
  });
});

describe('tenants:run (CLI)', () => {
  beforeAll(async () => {
    await withTk(resetData);
    await tk?.close();
    tk = undefined;
  });

  it('--json: each tenant with its rows; a failing tenant is reported and the exit code is 1', async () => {
    const result = await cli(['tenants:run', path.join(FILES, 'backfill.sql'), '--json']);
    expect(result.code, result.stderr).toBe(1);
    const doc = JSON.parse(result.stdout);
    expect(doc).toMatchObject({ command: 'tenants:run', kind: 'sql', totals: { ran: 2, failed: 1, total: 3 } });
    const ok = doc.tenants.find((t: { orgId: string }) => t.orgId === 'org_run_01');
    expect(ok.rows).toEqual([{ n: '3', total: 6, big: '9007199254740993' }]);
    expect(doc.tenants.find((t: { orgId: string }) => t.orgId === BROKEN).outcome).toBe('failed');
  });

  it('text: the rows per tenant, the cap, and one-line errors', async () => {
    const result = await cli([
      'tenants:run',
      path.join(FILES, 'many-rows.sql'),
      '--tenant',
      'org_run_01',
      '--rows',
      '3',
    ]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('org_run_01 (');
    expect(result.stdout).toContain('150 rows, the first 3 kept');
    expect(result.stdout).toMatch(/^3\s+row 3$/m);
    expect(result.stdout).toContain('1 tenant: 1 ran, 0 failed, 0 skipped');

    const refused = await cli(['tenants:run', path.join(FILES, 'no-run.mjs')]);
    expect(refused.code).toBe(2);
    expect(
      refused.stderr
        .trim()
        .split('\n')
        .filter((l) => !l.startsWith('Using the embedded')),
    ).toEqual(['error: no-run.mjs exports no run(knex, tenant) function']);
  });
});
