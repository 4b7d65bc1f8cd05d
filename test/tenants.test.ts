/**
 * Rolling tenant migrations out to every tenant, through the library API (`openToolkit`):
 * one batch per tenant in one transaction, transaction-scoped search_path over a shared pool,
 * per-tenant failure isolation, the corner cases of the registry, and rollbacks at scale.
 * Exit codes, text and JSON output are in tenants-cli.test.ts; racing runs in
 * tenants-concurrency.test.ts.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { LOCK_NAMESPACE } from '../src/db/locks.ts';
import {
  type FanoutReport,
  folderSource,
  openToolkit,
  runSchema,
  schemaNameFor,
  type TenantReport,
  type Toolkit,
  tenantTarget,
} from '../src/index.ts';
import {
  columnsOf,
  deployed,
  deployFolder,
  lastMigrationError,
  orgIds,
  provisionAll,
  resetTenants,
  tablesIn,
  tracking,
  V1,
} from './fixtures/fan-kit/kit.ts';
import { startEngine, type TestEngine } from './support/engine.ts';

const V2 = [...V1, '003_path_probe.ts', '004_member_email.ts'];
const NEW_IN_V2 = ['003_path_probe.ts', '004_member_email.ts'];
/** The pool is smaller than most tenant counts here, so connections are handed from tenant to tenant. */
const POOL_MAX = 3;

let engine: TestEngine;
let tk: Toolkit;

beforeAll(async () => {
  engine = await startEngine('tenants');
  // Tenants are provisioned with V1, as if deployed earlier; each test then deploys a folder.
  tk = await openToolkit(
    engine.config({ TENANT_MIGRATIONS_DIR: deployFolder(V1), TENANT_EXTENSIONS: '', DB_POOL_MAX: String(POOL_MAX) }),
  );
  const master = await tk.migrateMaster();
  expect(master.error).toBeNull();
});

afterAll(async () => {
  await tk?.close();
  await engine?.stop();
});

beforeEach(async () => {
  await resetTenants(tk.knex);
});

function byOrg(report: FanoutReport): Map<string, TenantReport> {
  return new Map(report.tenants.map((t) => [t.orgId, t]));
}

async function rows<T>(sql: string, bindings: readonly unknown[] = []): Promise<T[]> {
  const result = await tk.knex.raw(sql, bindings as never);
  return result.rows as T[];
}

interface PooledSession {
  readonly pid: number;
  readonly path: string;
  readonly pathDefault: string;
  readonly lockTimeout: string;
  readonly lockTimeoutDefault: string;
}

/**
 * Takes every connection of the pool at once (a barrier keeps each one busy until all are
 * held) and reads its session's search_path and lock_timeout, with the values a RESET restores.
 */
async function inspectPool(size: number): Promise<PooledSession[]> {
  let arrived = 0;
  let release!: () => void;
  const everyoneHere = new Promise<void>((resolve) => (release = resolve));
  return Promise.all(
    Array.from({ length: size }, () =>
      tk.knex.transaction(async (trx) => {
        // pg_settings shows this session's value (setting) and what a RESET restores (reset_val).
        const result = await trx.raw(
          `select pg_backend_pid() as pid,
                  max(setting) filter (where name = 'search_path') as path,
                  max(reset_val) filter (where name = 'search_path') as "pathDefault",
                  max(setting) filter (where name = 'lock_timeout') as "lockTimeout",
                  max(reset_val) filter (where name = 'lock_timeout') as "lockTimeoutDefault"
             from pg_settings where name in ('search_path', 'lock_timeout')`,
        );
        if (++arrived === size) release();
        await everyoneHere;
        return result.rows[0] as PooledSession;
      }),
    ),
  );
}

/** Every pooled connection is back to the session defaults: no tenant's path, no lock_timeout of a run. */
async function expectPoolClean(): Promise<PooledSession[]> {
  const sessions = await inspectPool(tk.config.poolMax);
  for (const session of sessions) {
    expect(session.path).toBe(session.pathDefault);
    expect(session.lockTimeout).toBe(session.lockTimeoutDefault);
  }
  return sessions;
}

async function toolkitLocksHeld(): Promise<number> {
  const [row] = await rows<{ n: string }>(
    "select count(*) as n from pg_locks where locktype = 'advisory' and classid = ?::oid and database = (select oid from pg_database where datname = current_database())",
    [LOCK_NAMESPACE],
  );
  return Number(row!.n);
}

describe('migrate:tenants (library)', () => {
  it('applies the pending files to every ACTIVE tenant as one batch, tracked in the same transaction', async () => {
    const ids = orgIds('batch', 3);
    const schemas = await provisionAll(tk, ids);
    // Rows that are not ACTIVE are left alone: a provisioning that failed, or one in flight.
    await tk
      .knex('tenants')
      .withSchema('public')
      .insert([
        {
          clerk_org_id: 'org_batch_failed',
          schema_name: schemaNameFor('org_batch_failed'),
          status: 'FAILED',
          error: 'boom',
        },
        {
          clerk_org_id: 'org_batch_inflight',
          schema_name: schemaNameFor('org_batch_inflight'),
          status: 'PROVISIONING',
        },
      ]);

    const report = await deployed(tk, V2).migrateTenants();

    expect(report.direction).toBe('up');
    expect(report.totals).toEqual({ migrated: 3, 'up-to-date': 0, failed: 0, skipped: 2, total: 5 });
    const outcomes = byOrg(report);
    for (const id of ids) {
      const t = outcomes.get(id)!;
      expect(t).toMatchObject({
        outcome: 'migrated',
        schema: schemas.get(id),
        migrations: NEW_IN_V2,
        error: null,
        warnings: [],
      });
    }
    expect(outcomes.get('org_batch_failed')).toMatchObject({
      outcome: 'skipped',
      error: { message: expect.stringContaining('FAILED') },
    });
    expect(outcomes.get('org_batch_inflight')).toMatchObject({
      outcome: 'skipped',
      error: { message: expect.stringContaining('PROVISIONING') },
    });
    expect(
      await rows('select nspname from pg_namespace where nspname in (?, ?)', [
        schemaNameFor('org_batch_failed'),
        schemaNameFor('org_batch_inflight'),
      ]),
    ).toEqual([]);

    for (const schema of schemas.values()) {
      expect(await tracking(tk.knex, schema)).toEqual([
        { name: '001_members.ts', batch: 1 },
        { name: '002_settings.ts', batch: 1 },
        { name: '003_path_probe.ts', batch: 2 },
        { name: '004_member_email.ts', batch: 2 },
      ]);
      const times: unknown[] = await tk.knex.withSchema(schema).from('knex_migrations_tenant').pluck('migration_time');
      expect(times.every((t) => t instanceof Date)).toBe(true);
      // Same transaction: the tracking rows of batch 2 were written by the transaction that
      // ran 003's insert and created 004's column (xmin is the writing transaction's id).
      const [probe] = await rows<{ xid: string }>(`select xmin::text as xid from ??.path_probe`, [schema]);
      const [column] = await rows<{ xid: string }>(
        `select a.xmin::text as xid from pg_attribute a where a.attrelid = to_regclass(?) and a.attname = 'email'`,
        [`${schema}.members`],
      );
      const batch2 = await rows<{ xid: string }>(
        `select distinct xmin::text as xid from ??.knex_migrations_tenant where batch = 2`,
        [schema],
      );
      const batch1 = await rows<{ xid: string }>(
        `select distinct xmin::text as xid from ??.knex_migrations_tenant where batch = 1`,
        [schema],
      );
      expect(batch2).toEqual([{ xid: probe!.xid }]);
      expect(column!.xid).toBe(probe!.xid);
      expect(batch1.map((r) => r.xid)).not.toContain(probe!.xid);
    }

    const again = await deployed(tk, V2).migrateTenants();
    expect(again.totals).toMatchObject({ migrated: 0, 'up-to-date': 3, failed: 0, skipped: 2 });
  });

  it('scopes search_path to each tenant transaction: 30 tenants through a pool of 3 connections', async () => {
    const ids = orgIds('path', 30);
    const schemas = await provisionAll(tk, ids);

    const report = await deployed(tk, V2).migrateTenants();
    expect(report.totals).toMatchObject({ migrated: 30, failed: 0 });

    const pids = new Set<number>();
    for (const schema of schemas.values()) {
      // Each tenant's probe landed in its own schema and saw its own path, whichever connection ran it.
      const probe = await rows<{ search_path: string; current_schema: string; backend_pid: number }>(
        'select * from ??.path_probe',
        [schema],
      );
      expect(probe).toEqual([
        { search_path: `"${schema}", public`, current_schema: schema, backend_pid: expect.any(Number) },
      ]);
      pids.add(probe[0]!.backend_pid);
    }
    expect(await tablesIn(tk.knex, 'public')).not.toContain('path_probe');
    // 30 tenants, at most POOL_MAX connections: connections were reused across tenants.
    expect(pids.size).toBeLessThanOrEqual(tk.config.poolMax);

    // The connections handed back to the pool carry no tenant's path (and some of them ran tenants:
    // one created late, while a worker was already served, may have run none).
    const sessions = await expectPoolClean();
    expect(sessions.filter((s) => pids.has(s.pid)).length).toBeGreaterThan(0);
    expect(await toolkitLocksHeld()).toBe(0);
  });

  it('runs transaction: false migrations (CREATE INDEX CONCURRENTLY) outside a transaction, with the same scoping', async () => {
    const ids = orgIds('nontx', 6);
    const schemas = await provisionAll(tk, ids);
    const files = [...V1, '003_path_probe.ts', '006_concurrent_index.ts', '007_session_probe.ts'];

    const report = await deployed(tk, files).migrateTenants();

    expect(report.tenants.map((t) => t.error)).toEqual(report.tenants.map(() => null));
    expect(report.totals).toMatchObject({ migrated: 6, failed: 0 });
    for (const t of report.tenants)
      expect(t.migrations).toEqual(['003_path_probe.ts', '006_concurrent_index.ts', '007_session_probe.ts']);
    for (const schema of schemas.values()) {
      const indexes = await rows<{ valid: boolean }>(
        `select i.indisvalid as valid from pg_index i join pg_class c on c.oid = i.indexrelid join pg_namespace n on n.oid = c.relnamespace
          where c.relname = 'members_handle_idx' and n.nspname = ?`,
        [schema],
      );
      expect(indexes).toEqual([{ valid: true }]);
      expect(await rows('select search_path, "current_schema" from ??.session_probe', [schema])).toEqual([
        { search_path: `"${schema}", public`, current_schema: schema },
      ]);
      expect((await tracking(tk.knex, schema)).filter((r) => r.batch === 2).map((r) => r.name)).toEqual([
        '003_path_probe.ts',
        '006_concurrent_index.ts',
        '007_session_probe.ts',
      ]);
    }
    expect(
      await rows("select indexname from pg_indexes where schemaname = 'public' and indexname = 'members_handle_idx'"),
    ).toEqual([]);
    expect(await tablesIn(tk.knex, 'public')).not.toContain('session_probe');
    // The session-level path and advisory lock of the dedicated connection were undone.
    await expectPoolClean();
    expect(await toolkitLocksHeld()).toBe(0);

    const down = await deployed(tk, files).rollbackTenants();
    expect(down.totals).toMatchObject({ migrated: 6, failed: 0 });
    for (const schema of schemas.values()) {
      expect(await tracking(tk.knex, schema)).toEqual([
        { name: '001_members.ts', batch: 1 },
        { name: '002_settings.ts', batch: 1 },
      ]);
      expect(
        await rows("select indexname from pg_indexes where schemaname = ? and indexname = 'members_handle_idx'", [
          schema,
        ]),
      ).toEqual([]);
    }
  });

  it('a transaction: false migration failing on one tenant leaves the pool clean and the other tenants migrated', async () => {
    const [a, b, c] = orgIds('nontxfail', 3) as [string, string, string];
    const schemas = await provisionAll(tk, [a, b, c]);
    const sb = schemas.get(b)!;
    await tk.knex
      .withSchema(sb)
      .from('members')
      .insert([{ handle: 'dup' }, { handle: 'dup' }]);
    const files = [...V1, '003_path_probe.ts', '011_unique_handle_concurrently.ts', '012_member_nickname.ts'];

    const report = await deployed(tk, files).migrateTenants();

    for (const id of [a, c]) {
      expect(byOrg(report).get(id)).toMatchObject({ outcome: 'migrated', migrations: files.slice(2), error: null });
    }
    // 003 ran in the batch's transaction and committed before the step that cannot be in one;
    // that step failed, and 012 after it never ran.
    const failed = byOrg(report).get(b)!;
    expect(failed).toMatchObject({
      outcome: 'failed',
      migrations: ['003_path_probe.ts'],
      error: { migration: '011_unique_handle_concurrently.ts', code: '23505' },
    });
    expect(await tracking(tk.knex, sb)).toEqual([
      { name: '001_members.ts', batch: 1 },
      { name: '002_settings.ts', batch: 1 },
      { name: '003_path_probe.ts', batch: 2 },
    ]);
    expect(await columnsOf(tk.knex, sb, 'members')).toEqual(['handle', 'id']);
    expect(await lastMigrationError(tk.knex, b)).toMatch(/011_unique_handle_concurrently\.ts/);
    expect(await tablesIn(tk.knex, 'public')).not.toContain('path_probe');
    await expectPoolClean();
    expect(await toolkitLocksHeld()).toBe(0);
  });

  it('leaves a tenant whose migration fails exactly as it was, migrates the others, and records the error until a success clears it', async () => {
    const [a, b, c] = orgIds('fail', 3) as [string, string, string];
    const schemas = await provisionAll(tk, [a, b, c]);
    const sb = schemas.get(b)!;
    // Only b has data that the unique index of 005 rejects.
    for (const [id, handles] of [
      [a, ['dup']],
      [b, ['dup', 'dup']],
      [c, ['dup']],
    ] as const) {
      await tk.knex
        .withSchema(schemas.get(id)!)
        .from('members')
        .insert(handles.map((handle) => ({ handle })));
    }
    const files = [...V2, '005_unique_handle.ts'];

    const report = await deployed(tk, files).migrateTenants();

    expect(report.totals).toMatchObject({ migrated: 2, failed: 1, skipped: 0 });
    const outcomes = byOrg(report);
    expect(outcomes.get(a)).toMatchObject({ outcome: 'migrated', migrations: [...NEW_IN_V2, '005_unique_handle.ts'] });
    expect(outcomes.get(c)).toMatchObject({ outcome: 'migrated', migrations: [...NEW_IN_V2, '005_unique_handle.ts'] });
    const failed = outcomes.get(b)!;
    expect(failed).toMatchObject({
      outcome: 'failed',
      migrations: [],
      error: { migration: '005_unique_handle.ts', code: '23505' },
    });
    expect(failed.error!.message).toMatch(/005_unique_handle\.ts \(up\) failed: .*could not create unique index/);

    // b: its earlier migrations of the batch (003, 004) were rolled back with the failing one.
    expect(await tracking(tk.knex, sb)).toEqual([
      { name: '001_members.ts', batch: 1 },
      { name: '002_settings.ts', batch: 1 },
    ]);
    expect(await tablesIn(tk.knex, sb)).toEqual([
      'knex_migrations_tenant',
      'knex_migrations_tenant_lock',
      'members',
      'settings',
    ]);
    expect(await columnsOf(tk.knex, sb, 'members')).toEqual(['handle', 'id']);
    expect(await tk.knex.withSchema(sb).from('members').pluck('handle')).toEqual(['dup', 'dup']);
    expect(await lastMigrationError(tk.knex, b)).toMatch(/005_unique_handle\.ts/);
    expect(await lastMigrationError(tk.knex, a)).toBeNull();

    const status = await deployed(tk, files).status();
    const row = status.tenants.find((t) => t.orgId === b)!;
    expect(row).toMatchObject({ state: 'failed', applied: 2, pending: [...NEW_IN_V2, '005_unique_handle.ts'] });
    expect(row.error).toMatch(/could not create unique index/);
    expect(status.summary).toMatchObject({ 'up-to-date': 2, behind: 0, failed: 1, total: 3 });

    // Fix the data; the next run migrates b and clears its error.
    await tk.knex.raw('delete from ??.members where id = (select max(id) from ??.members)', [sb, sb]);
    const retry = await deployed(tk, files).migrateTenants();
    expect(retry.totals).toMatchObject({ migrated: 1, 'up-to-date': 2, failed: 0 });
    expect(byOrg(retry).get(b)!.migrations).toEqual([...NEW_IN_V2, '005_unique_handle.ts']);
    expect(await lastMigrationError(tk.knex, b)).toBeNull();
    const after = await deployed(tk, files).status();
    expect(after.tenants.find((t) => t.orgId === b)).toMatchObject({ state: 'up-to-date', error: null, pending: [] });
    expect(after.summary).toMatchObject({ 'up-to-date': 3, failed: 0 });
  });

  it('reports a tenant whose schema is missing as failed and creates nothing in public', async () => {
    const [kept, gone] = orgIds('gone', 2) as [string, string];
    const schemas = await provisionAll(tk, [kept, gone]);
    const missing = schemas.get(gone)!;
    await tk.knex.raw('drop schema ?? cascade', [missing]);
    const publicBefore = await tablesIn(tk.knex, 'public');

    const report = await deployed(tk, V2).migrateTenants();

    expect(byOrg(report).get(kept)).toMatchObject({ outcome: 'migrated' });
    const failed = byOrg(report).get(gone)!;
    expect(failed).toMatchObject({ outcome: 'failed', error: { code: 'E_SCHEMA_MISSING' } });
    expect(failed.error!.message).toContain(`schema ${missing} does not exist`);
    expect(await lastMigrationError(tk.knex, gone)).toContain(missing);
    const status = await deployed(tk, V2).status();
    expect(status.tenants.find((t) => t.orgId === gone)).toMatchObject({ state: 'schema-missing' });

    // The runner's own check, for a schema dropped after the fan-out looked (PostgreSQL would
    // otherwise skip the missing schema on the path and create the tables in public).
    const migrations = await folderSource(deployFolder(V2)).load();
    const direct = await runSchema(tk.knex, tenantTarget(missing), migrations, { lockTimeoutMs: 5000 }, 'up');
    expect(direct).toMatchObject({ outcome: 'failed', migrations: [], error: { code: 'E_SCHEMA_MISSING' } });

    expect(await tablesIn(tk.knex, 'public')).toEqual(publicBefore);
    expect(await rows('select nspname from pg_namespace where nspname = ?', [missing])).toEqual([]);
  });

  it('with failFast, a schema found missing before the run starts counts as the first failure', async () => {
    const ids = orgIds('gonefast', 3);
    const schemas = await provisionAll(tk, ids);
    await tk.knex.raw('drop schema ?? cascade', [schemas.get(ids[0]!)!]);

    const report = await deployed(tk, V2).migrateTenants({ failFast: true, concurrency: 1 });

    expect(report.totals).toEqual({ migrated: 0, 'up-to-date': 0, failed: 1, skipped: 2, total: 3 });
    for (const id of ids.slice(1))
      expect((await tracking(tk.knex, schemas.get(id)!)).map((r) => r.name)).toEqual([...V1]);
  });

  it('migrates a tenant registered before the toolkit (ACTIVE row and schema, no tracking table) like any other', async () => {
    const [current] = orgIds('legacy', 1) as [string];
    const schemas = await provisionAll(tk, [current]);
    const legacy = 'org_legacy_1';
    const legacySchema = schemaNameFor(legacy);
    await tk.knex.raw('create schema ??', [legacySchema]);
    await tk
      .knex('tenants')
      .withSchema('public')
      .insert({ clerk_org_id: legacy, schema_name: legacySchema, status: 'ACTIVE' });

    const report = await deployed(tk, V2).migrateTenants();

    expect(report.totals).toMatchObject({ migrated: 2, failed: 0 });
    expect(byOrg(report).get(legacy)).toMatchObject({ outcome: 'migrated', schema: legacySchema, migrations: V2 });
    expect(byOrg(report).get(current)).toMatchObject({ outcome: 'migrated', migrations: NEW_IN_V2 });
    expect(await tracking(tk.knex, legacySchema)).toEqual(V2.map((name) => ({ name, batch: 1 })));
    expect(await tablesIn(tk.knex, legacySchema)).toEqual([
      'knex_migrations_tenant',
      'knex_migrations_tenant_lock',
      'members',
      'path_probe',
      'settings',
    ]);
    expect(await tracking(tk.knex, schemas.get(current)!)).toHaveLength(4);
    expect(await tablesIn(tk.knex, 'public')).not.toContain('knex_migrations_tenant');
  });

  it('refuses a tenant whose applied migration file is gone, naming the file, and changes nothing there', async () => {
    const [ahead, behind] = orgIds('corrupt', 2) as [string, string];
    const schemas = await provisionAll(tk, [ahead, behind]);
    const sa = schemas.get(ahead)!;
    // `ahead` got 003 from a deploy that was later reverted in the repository.
    expect((await deployed(tk, [...V1, '003_path_probe.ts']).migrateTenants({ orgIds: [ahead] })).totals.migrated).toBe(
      1,
    );
    const files = [...V1, '004_member_email.ts'];

    const report = await deployed(tk, files).migrateTenants();

    const failed = byOrg(report).get(ahead)!;
    expect(failed).toMatchObject({ outcome: 'failed', migrations: [], error: { code: 'E_MISSING_FILES' } });
    expect(failed.error!.message).toMatch(/migration directory is corrupt.*003_path_probe\.ts/);
    expect(byOrg(report).get(behind)).toMatchObject({ outcome: 'migrated', migrations: ['004_member_email.ts'] });
    expect(await tracking(tk.knex, sa)).toEqual([
      { name: '001_members.ts', batch: 1 },
      { name: '002_settings.ts', batch: 1 },
      { name: '003_path_probe.ts', batch: 2 },
    ]);
    expect(await columnsOf(tk.knex, sa, 'members')).toEqual(['handle', 'id']);

    const status = await deployed(tk, files).status();
    expect(status.tenants.find((t) => t.orgId === ahead)).toMatchObject({
      state: 'failed',
      missing: ['003_path_probe.ts'],
    });

    // Rolling back needs the file too.
    const down = await deployed(tk, files).rollbackTenants({ orgIds: [ahead], lastBatch: true });
    expect(down.tenants[0]).toMatchObject({ outcome: 'failed', error: { code: 'E_MISSING_FILES' } });
    expect(await tablesIn(tk.knex, sa)).toContain('path_probe');
  });

  it('flags a pending file older than the newest applied one as a warning, and applies it', async () => {
    const [ahead, behind] = orgIds('order', 2) as [string, string];
    const schemas = await provisionAll(tk, [ahead, behind]);
    await deployed(tk, [...V1, '004_member_email.ts']).migrateTenants({ orgIds: [ahead] });

    // 003 was merged late from another branch.
    const report = await deployed(tk, V2).migrateTenants();

    const late = byOrg(report).get(ahead)!;
    expect(late).toMatchObject({ outcome: 'migrated', migrations: ['003_path_probe.ts'] });
    expect(late.warnings).toHaveLength(1);
    expect(late.warnings[0]).toMatch(/older than the newest applied.*003_path_probe\.ts/);
    expect(byOrg(report).get(behind)).toMatchObject({ outcome: 'migrated', migrations: NEW_IN_V2, warnings: [] });
    expect((await tracking(tk.knex, schemas.get(ahead)!)).map((r) => `${r.batch}:${r.name}`)).toEqual([
      '1:001_members.ts',
      '1:002_settings.ts',
      '2:004_member_email.ts',
      '3:003_path_probe.ts',
    ]);
  });

  it('migrates and rolls back 40 tenants: the last batch, then --all, then nothing left', async () => {
    const ids = orgIds('many', 40);
    const schemas = [...(await provisionAll(tk, ids)).values()];
    const v2 = deployed(tk, V2);
    const v1Rows = V1.map((name) => ({ name, batch: 1 }));

    const up = await v2.migrateTenants();
    expect(up.totals).toEqual({ migrated: 40, 'up-to-date': 0, failed: 0, skipped: 0, total: 40 });

    const down = await v2.rollbackTenants();
    expect(down.direction).toBe('down');
    expect(down.totals).toEqual({ migrated: 40, 'up-to-date': 0, failed: 0, skipped: 0, total: 40 });
    for (const t of down.tenants) expect(t.migrations).toEqual(['004_member_email.ts', '003_path_probe.ts']);
    for (const schema of schemas) {
      expect(await tracking(tk.knex, schema)).toEqual(v1Rows);
      expect(await tablesIn(tk.knex, schema)).toEqual([
        'knex_migrations_tenant',
        'knex_migrations_tenant_lock',
        'members',
        'settings',
      ]);
      expect(await columnsOf(tk.knex, schema, 'members')).toEqual(['handle', 'id']);
    }

    expect((await v2.migrateTenants()).totals.migrated).toBe(40);
    const all = await v2.rollbackTenants({ all: true });
    expect(all.totals).toMatchObject({ migrated: 40, failed: 0 });
    for (const t of all.tenants) expect(t.migrations).toEqual([...V2].reverse());
    for (const schema of schemas) {
      expect(await tracking(tk.knex, schema)).toEqual([]);
      expect(await tablesIn(tk.knex, schema)).toEqual(['knex_migrations_tenant', 'knex_migrations_tenant_lock']);
    }

    const nothing = await v2.rollbackTenants({ all: true });
    expect(nothing.totals).toMatchObject({ migrated: 0, 'up-to-date': 40 });

    const again = await v2.migrateTenants();
    expect(again.totals.migrated).toBe(40);
    for (const schema of schemas)
      expect(await tracking(tk.knex, schema)).toEqual(V2.map((name) => ({ name, batch: 1 })));
  });
});
