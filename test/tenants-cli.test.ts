/**
 * The fan-out commands as an operator runs them: the real CLI in a child process, for exit
 * codes, text, `--json`, `--tenant`, `--fail-fast`, `--concurrency`, `migrate` and `status`.
 * Setup and checks go through the library in this process, with the toolkit closed while the
 * CLI runs (the embedded engine admits one process at a time).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openToolkit, type Toolkit } from '../src/index.ts';
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
import { type CliResult, folders, runCli } from './support/cli.ts';
import { startEngine, type TestEngine } from './support/engine.ts';

const V2 = [...V1, '003_path_probe.ts', '004_member_email.ts'];
const NEW_IN_V2 = ['003_path_probe.ts', '004_member_email.ts'];
const WITH_UNIQUE = [...V2, '005_unique_handle.ts'];
const MASTER = masterFolder();

let engine: TestEngine;

/** Opens a toolkit reading tenant migrations from these pool files, runs `cb`, closes it. */
async function withTk<T>(files: readonly string[], cb: (tk: Toolkit) => Promise<T>, master = MASTER): Promise<T> {
  const tk = await openToolkit(
    engine.config({ MASTER_MIGRATIONS_DIR: master, TENANT_MIGRATIONS_DIR: deployFolder(files), TENANT_EXTENSIONS: '' }),
  );
  try {
    return await cb(tk);
  } finally {
    await tk.close();
  }
}

/** Runs the CLI against this file's database with a tenant folder of these pool files. */
function cli(
  args: readonly string[],
  files: readonly string[],
  extra: Record<string, string> = {},
): Promise<CliResult> {
  return runCli(args, { ...engine.env, ...folders(MASTER, deployFolder(files)), TENANT_EXTENSIONS: '', ...extra });
}

/** Parses stdout, which must be exactly one JSON document. */
// biome-ignore lint/suspicious/noExplicitAny: a parsed CLI document, read field by field by the assertions
function json(result: CliResult): any {
  expect(
    () => JSON.parse(result.stdout),
    `stdout is not one JSON document:\n${result.stdout}\n${result.stderr}`,
  ).not.toThrow();
  return JSON.parse(result.stdout);
}

function lines(text: string): string[] {
  return text.split('\n').filter((l) => l.trim() !== '');
}

/** The status table row of an org, as cells (columns are separated by two spaces or more). */
function statusRow(stdout: string, orgId: string): string[] {
  const line = lines(stdout).find((l) => l.startsWith(`${orgId} `));
  expect(line, `no status row for ${orgId} in:\n${stdout}`).toBeDefined();
  return line!.trim().split(/\s{2,}/);
}

/** Errors are one line on stderr (the embedded engine may add its one notice line). */
function errorLines(result: CliResult): string[] {
  return lines(result.stderr).filter((l) => !l.startsWith('Using the embedded PostgreSQL'));
}

beforeAll(async () => {
  engine = await startEngine('tenants-cli');
  const report = await withTk(V1, (tk) => tk.migrateMaster());
  expect(report.error).toBeNull();
});

afterAll(async () => {
  await engine?.stop();
});

/**
 * One toolkit session before the CLI runs: drops the previous test's tenants, provisions these
 * with V1 (as deployed earlier) and lets the test prepare data. Returns org id → schema.
 */
function setup(
  ids: readonly string[],
  prepare?: (tk: Toolkit, schemas: Map<string, string>) => Promise<unknown>,
): Promise<Map<string, string>> {
  return withTk(V1, async (tk) => {
    await resetTenants(tk.knex);
    const schemas = await provisionAll(tk, ids);
    await prepare?.(tk, schemas);
    return schemas;
  });
}

describe('migrate:tenants, rollback:tenants, migrate:status (CLI)', () => {
  it('status shows who is behind; migrate:tenants --json migrates every tenant; status then shows them up to date', async () => {
    const ids = orgIds('cli', 3);
    const schemas = await setup(ids);

    const before = await cli(['status'], V2);
    expect(before.code, before.stderr).toBe(0);
    expect(before.stdout).toContain('Master migrations (public.knex_migrations_master)');
    expect(before.stdout).toMatch(/applied\s+batch 1\s+20261121000001_create_tenants\.ts/);
    for (const id of ids) {
      // The pending count and the first pending name (test/status.test.ts covers the layout).
      expect(statusRow(before.stdout, id)).toEqual([id, schemas.get(id), 'ACTIVE', '2', '2', NEW_IN_V2[0], 'behind']);
    }
    expect(lines(before.stdout).at(-1)).toBe('0 up to date, 3 behind, 0 failed');

    const run = await cli(['migrate:tenants', '--json'], V2);
    expect(run.code, run.stderr).toBe(0);
    const doc = json(run);
    expect(doc.command).toBe('migrate:tenants');
    expect(doc.totals).toEqual({ migrated: 3, 'up-to-date': 0, failed: 0, skipped: 0, total: 3 });
    expect(doc.tenants.map((t: { orgId: string }) => t.orgId).sort()).toEqual(ids);
    for (const t of doc.tenants) {
      expect(t).toMatchObject({
        schema: schemas.get(t.orgId),
        outcome: 'migrated',
        migrations: NEW_IN_V2,
        error: null,
      });
    }

    const after = await cli(['migrate:status'], V2);
    expect(after.code, after.stderr).toBe(0);
    for (const id of ids)
      expect(statusRow(after.stdout, id)).toEqual([id, schemas.get(id), 'ACTIVE', '4', '0', '-', 'up-to-date']);
    expect(lines(after.stdout).at(-1)).toBe('3 up to date, 0 behind, 0 failed');
  });

  it('--tenant (repeatable) limits migrate and rollback to those tenants; an unregistered org id is a usage error', async () => {
    const [a, b, c] = orgIds('only', 3) as [string, string, string];
    const schemas = await setup([a, b, c]);

    const run = await cli(['migrate:tenants', '--tenant', a, '--tenant', c, '--json'], V2);
    expect(run.code, run.stderr).toBe(0);
    const doc = json(run);
    expect(doc.tenants.map((t: { orgId: string }) => t.orgId).sort()).toEqual([a, c]);
    expect(doc.totals).toMatchObject({ migrated: 2, total: 2 });

    const back = await cli(['rollback:tenants', '--tenant', a, '--json'], V2);
    expect(back.code, back.stderr).toBe(0);
    const down = json(back);
    expect(down).toMatchObject({ command: 'rollback:tenants', direction: 'down', totals: { migrated: 1, total: 1 } });
    expect(down.tenants[0]).toMatchObject({ orgId: a, outcome: 'migrated', migrations: [...NEW_IN_V2].reverse() });

    const unknown = await cli(['migrate:tenants', '--tenant', b, '--tenant', 'org_nobody'], V2);
    expect(unknown.code).toBe(2);
    expect(errorLines(unknown)).toEqual([expect.stringMatching(/^error: Not registered: org_nobody\b/)]);

    await withTk(V2, async (tk) => {
      expect((await tracking(tk.knex, schemas.get(a)!)).map((r) => r.name)).toEqual([...V1]);
      expect((await tracking(tk.knex, schemas.get(b)!)).map((r) => r.name)).toEqual([...V1]);
      expect((await tracking(tk.knex, schemas.get(c)!)).map((r) => r.name)).toEqual(V2);
    });
  });

  it('exits 1 when a tenant fails, names the tenant, the migration and the error; status shows it until a success clears it', async () => {
    const [a, b, c] = orgIds('boom', 3) as [string, string, string];
    const schemas = await setup([a, b, c], (tk, s) =>
      tk.knex
        .withSchema(s.get(b)!)
        .from('members')
        .insert([{ handle: 'dup' }, { handle: 'dup' }]),
    );
    const sb = schemas.get(b)!;

    const run = await cli(['migrate:tenants'], WITH_UNIQUE);
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(/^3 tenants: 2 migrated, 0 up to date, 1 failed, 0 skipped \(/m);
    const out = lines(run.stdout);
    const summary = out.slice(out.indexOf('Failed:'));
    expect(summary).toHaveLength(2);
    expect(summary[1]).toMatch(
      new RegExp(
        `^  ${b} \\(${sb}\\): 005_unique_handle\\.ts \\(up\\) failed: .*could not create unique index "members_handle_unique"`,
      ),
    );

    const status = await cli(['status'], WITH_UNIQUE);
    expect(status.code, status.stderr).toBe(0);
    const row = statusRow(status.stdout, b);
    expect(row.slice(0, 7)).toEqual([b, sb, 'ACTIVE', '2', '3', WITH_UNIQUE[2], 'failed']);
    expect(row[7]).toMatch(/005_unique_handle\.ts \(up\) failed: .*could not create unique index/);
    expect(lines(status.stdout).at(-1)).toBe('2 up to date, 0 behind, 1 failed');

    await withTk(V1, async (tk) => {
      expect(await tracking(tk.knex, sb)).toEqual(V1.map((name) => ({ name, batch: 1 })));
      expect(await tablesIn(tk.knex, sb)).toEqual([
        'knex_migrations_tenant',
        'knex_migrations_tenant_lock',
        'members',
        'settings',
      ]);
      await tk.knex.raw('delete from ??.members where id = (select max(id) from ??.members)', [sb, sb]);
    });

    const retry = await cli(['migrate:tenants'], WITH_UNIQUE);
    expect(retry.code, retry.stdout + retry.stderr).toBe(0);
    expect(retry.stdout).toMatch(/^3 tenants: 1 migrated, 2 up to date, 0 failed, 0 skipped/m);
    expect(retry.stdout).not.toContain('Failed:');
    const cleared = await withTk(WITH_UNIQUE, (tk) => tk.status());
    expect(cleared.tenants.find((t) => t.orgId === b)).toMatchObject({ state: 'up-to-date', error: null });
    expect(cleared.summary).toMatchObject({ 'up-to-date': 3, behind: 0, failed: 0 });
  });

  it('a tenant whose schema is missing fails the run (exit 1); progress lines count every tenant that needed a run', async () => {
    const ids = orgIds('lost', 3);
    const schemas = await setup(ids, (tk, s) => tk.knex.raw('drop schema ?? cascade', [s.get(ids[1]!)!]));
    const lost = schemas.get(ids[1]!)!;

    const run = await cli(['migrate:tenants'], V2);
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(/^3 tenants: 2 migrated, 0 up to date, 1 failed, 0 skipped/m);
    const failed = lines(run.stdout).slice(lines(run.stdout).indexOf('Failed:') + 1);
    expect(failed).toEqual([
      expect.stringMatching(new RegExp(`^  ${ids[1]} \\(${lost}\\): schema ${lost} does not exist`)),
    ]);
    // Plain progress (no terminal): one numbered line per tenant that was run or failed, 1/3 to 3/3.
    const progress = lines(run.stdout).filter((l) => l.startsWith('['));
    expect(progress.map((l) => /^\[(\d+)\/(\d+) \((\d+)%\)/.exec(l)?.slice(1))).toEqual([
      ['1', '3', '33'],
      ['2', '3', '66'],
      ['3', '3', '100'],
    ]);
  });

  it('--fail-fast starts no tenant after the first failure and reports the rest skipped', async () => {
    const ids = orgIds('fast', 4);
    // Every tenant would fail, so whichever goes first fails and, one tenant at a time, no other has started.
    const schemas = await setup(ids, async (tk, s) => {
      for (const schema of s.values())
        await tk.knex
          .withSchema(schema)
          .from('members')
          .insert([{ handle: 'dup' }, { handle: 'dup' }]);
    });

    const run = await cli(['migrate:tenants', '--fail-fast', '--concurrency', '1', '--json'], WITH_UNIQUE);
    expect(run.code).toBe(1);
    const doc = json(run);
    expect(doc.totals).toEqual({ migrated: 0, 'up-to-date': 0, failed: 1, skipped: 3, total: 4 });
    const failed = doc.tenants.filter((t: { outcome: string }) => t.outcome === 'failed');
    expect(failed).toEqual([
      expect.objectContaining({
        migrations: [],
        error: expect.objectContaining({ migration: '005_unique_handle.ts' }),
      }),
    ]);
    for (const t of doc.tenants.filter((r: { outcome: string }) => r.outcome === 'skipped')) {
      expect(t).toMatchObject({ migrations: [], error: { message: expect.stringContaining('--fail-fast') } });
    }
    await withTk(V1, async (tk) => {
      for (const schema of schemas.values())
        expect((await tracking(tk.knex, schema)).map((r) => r.name)).toEqual([...V1]);
    });
  });

  it('--concurrency bounds how many tenants migrate at once, and must be a whole number of at least 1', async () => {
    const ids = orgIds('conc', 6);
    const schemas = await setup(ids);
    const files = [...V1, '009_lock_census.ts'];

    const bad = await cli(['migrate:tenants', '--concurrency', '0'], files);
    expect(bad.code).toBe(2);
    expect(errorLines(bad)).toEqual(['error: --concurrency must be a whole number of at least 1, got "0"']);

    // A pool of 4 would allow 4 tenants at once; the flag allows one.
    const run = await cli(['migrate:tenants', '--concurrency', '1'], files, { DB_POOL_MAX: '4' });
    expect(run.code, run.stdout + run.stderr).toBe(0);
    expect(run.stdout).toMatch(/^6 tenants: 6 migrated/m);
    const seen = await withTk(files, async (tk) => {
      const counts: number[] = [];
      for (const schema of schemas.values())
        counts.push(...(await tk.knex.withSchema(schema).from('lock_census').pluck('running')));
      return counts;
    });
    expect(seen).toHaveLength(12);
    // Each census counts its own tenant's lock, so it is never 0; a second tenant at once would make it 2.
    expect(Math.min(...seen)).toBe(1);
    expect(Math.max(...seen)).toBe(1);
  });

  it('migrate applies the master migrations first, then the tenant migrations that need them', async () => {
    const ids = orgIds('deploy', 2);
    const schemas = await setup(ids);
    const files = [...V1, '010_subscription.ts'];

    // A deploy whose master migration is broken stops before any tenant.
    const broken = await runCli(['migrate'], {
      ...engine.env,
      ...folders(masterFolder(['20261201000001_create_plans.ts', '20261201000002_broken.ts']), deployFolder(files)),
      TENANT_EXTENSIONS: '',
    });
    expect(broken.code).toBe(1);
    expect(broken.stdout).toMatch(
      /Master migration failed: 20261201000002_broken\.ts \(up\) failed: .*division by zero/,
    );
    expect(broken.stdout).not.toMatch(/tenants:/);

    const master = masterFolder(['20261201000001_create_plans.ts']);
    const run = await runCli(['migrate'], {
      ...engine.env,
      ...folders(master, deployFolder(files)),
      TENANT_EXTENSIONS: '',
    });
    expect(run.code, run.stdout + run.stderr).toBe(0);
    const out = lines(run.stdout);
    const masterLine = out.indexOf('Applied 1 master migration: 20261201000001_create_plans.ts');
    const tenantLine = out.findIndex((l) => l.startsWith('2 tenants: 2 migrated, 0 up to date, 0 failed, 0 skipped'));
    expect(masterLine, run.stdout).toBeGreaterThanOrEqual(0);
    expect(tenantLine, run.stdout).toBeGreaterThan(masterLine);

    const again = await runCli(['migrate', '--json'], {
      ...engine.env,
      ...folders(master, deployFolder(files)),
      TENANT_EXTENSIONS: '',
    });
    expect(again.code, again.stderr).toBe(0);
    const doc = json(again);
    expect(doc).toMatchObject({
      command: 'migrate',
      master: { outcome: 'up-to-date' },
      tenants: { totals: { 'up-to-date': 2, total: 2 } },
    });

    await withTk(
      files,
      async (tk) => {
        for (const schema of schemas.values()) {
          const rows = await tk.knex.raw(
            'select p.name from ??.subscription s join public.plans p on p.id = s.plan_id',
            [schema],
          );
          expect(rows.rows).toEqual([{ name: 'free' }]);
        }
        // Leave master as the other tests expect it (the tenants' foreign keys go first).
        await resetTenants(tk.knex);
        const down = await tk.rollbackMaster();
        expect(down.migrations).toEqual(['20261201000001_create_plans.ts']);
      },
      master,
    );
  });

  it('rollback:tenants reverts the last batch, then every batch with --all; out-of-order files are warned about', async () => {
    const [a, b] = orgIds('back', 2) as [string, string];
    // a got 004 first; 003 arrives later from another branch: a warning, but applied.
    const schemas = await setup([a, b], (tk) =>
      deployed(tk, [...V1, '004_member_email.ts']).migrateTenants({ orgIds: [a] }),
    );
    const run = await cli(['migrate:tenants'], V2);
    expect(run.code, run.stderr).toBe(0);
    expect(lines(run.stdout)).toContain(
      `warning: ${a} (${schemas.get(a)}): pending migrations older than the newest applied one: 003_path_probe.ts`,
    );
    expect(run.stdout).not.toContain(`warning: ${b}`);

    const last = await cli(['rollback:tenants'], V2);
    expect(last.code, last.stderr).toBe(0);
    expect(last.stdout).toMatch(/^2 tenants: 2 rolled back, 0 with nothing to roll back, 0 failed, 0 skipped/m);

    const all = await cli(['rollback:tenants', '--all', '--yes', '--json'], V2);
    expect(all.code, all.stderr).toBe(0);
    const doc = json(all);
    expect(doc).toMatchObject({
      command: 'rollback:tenants',
      direction: 'down',
      totals: { migrated: 2, failed: 0, total: 2 },
    });
    const byOrg = new Map(doc.tenants.map((t: { orgId: string }) => [t.orgId, t]));
    // Last batch first: a's was 003 alone (batch 3), b's was 003 and 004; --all took the rest.
    expect(byOrg.get(a)).toMatchObject({ migrations: ['004_member_email.ts', '002_settings.ts', '001_members.ts'] });
    expect(byOrg.get(b)).toMatchObject({ migrations: ['002_settings.ts', '001_members.ts'] });
  });
});
