import { copyFileSync, mkdtempSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import knexFactory, { type Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withDedicatedConnection } from '../src/db/dedicated.ts';
import { LOCK_NAMESPACE } from '../src/db/locks.ts';
import {
  createToolkit,
  digestOf,
  openToolkit,
  schemaNameFor,
  TENANT_TRACKING_TABLE,
  type Toolkit,
  tenantSearchPath,
} from '../src/index.ts';
import { addFleetCompanions, stuckKnexLocks } from '../src/migrations/tracking.ts';
import { folders, runCli } from './support/cli.ts';
import { FIXTURES, ROOT, startEngine, type TestEngine } from './support/engine.ts';

// Living beside plain Knex: changes it makes to a tenant's tracking table clear the registry
// digest (so the fast path notices them), Knex's lock table exists on every tenant and is taken
// by the toolkit's batches, a stuck Knex lock is found and cleared, and a rolled-back batch is
// all or nothing.
const BASIC = path.join(FIXTURES, 'knex-basic');
const BASIC_NAMES = ['001_knex_items.ts', '002_knex_tally.ts', '003_knex_extra.ts'];
const DOWN_FAILS = path.join(FIXTURES, 'knex-down-fails');
const SESSION = path.join(FIXTURES, 'knex-session');
const MASTER = path.join(ROOT, 'master-migrations');
const TRIGGER_MIGRATION = '20261202000003_tracking_trigger.ts';
const LOCK_TABLE = `${TENANT_TRACKING_TABLE}_lock`;

let engine: TestEngine;
let tk: Toolkit;
/** Registered before the tracking-trigger master migration ran. */
const OLD = ['org_knex_old_1', 'org_knex_old_2'];

/** The shipped master migrations without the tracking trigger's: a deployment from before it. */
function masterBeforeTrigger(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'knex-master-'));
  for (const name of readdirSync(MASTER)) {
    if (name !== TRIGGER_MIGRATION) copyFileSync(path.join(MASTER, name), path.join(dir, name));
  }
  return dir;
}

/** A folder with the first `count` migrations of knex-basic (a deploy from before the others). */
function basicUpTo(count: number): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'knex-basic-'));
  for (const name of BASIC_NAMES.slice(0, count)) copyFileSync(path.join(BASIC, name), path.join(dir, name));
  return dir;
}

function toolkitFor(dir: string): Toolkit {
  return createToolkit({
    knex: tk.knex,
    config: { ...tk.config, tenantMigrationsDir: dir },
    poolMax: tk.config.poolMax,
  });
}

async function open(masterDir: string): Promise<Toolkit> {
  return openToolkit(
    engine.config({ TENANT_MIGRATIONS_DIR: BASIC, MASTER_MIGRATIONS_DIR: masterDir, TENANT_EXTENSIONS: '' }),
  );
}

beforeAll(async () => {
  engine = await startEngine('beside_knex');
  tk = await open(masterBeforeTrigger());
  expect((await tk.migrateMaster()).error).toBeNull();
  for (const orgId of OLD) expect((await tk.provisionTenant(orgId)).outcome).toBe('provisioned');
  await tk.close();
  tk = await open(MASTER);
  const master = await tk.migrateMaster();
  expect(master).toMatchObject({ error: null, migrations: [TRIGGER_MIGRATION] });
});

afterAll(async () => {
  await tk?.close();
  await engine?.stop();
});

async function digestOfOrg(orgId: string): Promise<string | null> {
  const row = await tk.knex('tenants').withSchema('public').where({ clerk_org_id: orgId }).first('migrations_digest');
  return row?.migrations_digest ?? null;
}

async function applied(knex: Knex, schema: string): Promise<string[]> {
  const rows = await knex.withSchema(schema).from(TENANT_TRACKING_TABLE).select('name').orderBy('id');
  return rows.map((r: { name: string }) => r.name);
}

async function lockRows(schema: string): Promise<number[]> {
  const rows = await tk.knex.withSchema(schema).from(LOCK_TABLE).select('is_locked').orderBy('index');
  return rows.map((r: { is_locked: number }) => Number(r.is_locked));
}

/** Whether the tracking trigger is on the tenant's tracking table and on its Knex lock table. */
async function hasTrigger(schema: string): Promise<boolean> {
  return (await triggered(schema, TENANT_TRACKING_TABLE)) && (await triggered(schema, LOCK_TABLE));
}

async function triggered(schema: string, table: string): Promise<boolean> {
  const result = await tk.knex.raw(
    "select exists (select 1 from pg_trigger where tgname = 'tenant_migrate_tracking_changed' and tgrelid = to_regclass(?)) as present",
    [`"${schema}".${table}`],
  );
  return Boolean(result.rows[0]?.present);
}

/**
 * Plain Knex's migrator on one tenant, as a deploy script runs it: the tenant's tracking table,
 * and its schema first on the search path for the migrations' unqualified names (on one
 * connection, which is all the embedded engine has).
 */
async function plainKnex<T>(schema: string, dir: string, cb: (conn: Knex, config: Knex.MigratorConfig) => Promise<T>) {
  return withDedicatedConnection(tk.knex, async (conn) => {
    await conn.raw("select set_config('search_path', ?, false)", [tenantSearchPath(schema)]);
    try {
      return await cb(conn, {
        migrationSource: tsSource(dir),
        schemaName: schema,
        tableName: TENANT_TRACKING_TABLE,
      });
    } finally {
      await conn.raw('reset search_path');
    }
  });
}

/**
 * Knex's migration source for a folder of .ts files: Knex itself would `import()` them natively,
 * which Node cannot do for TypeScript; vitest's `import()` here can.
 */
function tsSource(dir: string): Knex.MigrationSource<string> {
  return {
    getMigrations: async () =>
      readdirSync(dir)
        .filter((name) => name.endsWith('.ts'))
        .sort(),
    getMigrationName: (name) => name,
    getMigration: (name) => import(path.join(dir, name)),
  };
}

/** A dump of what a schema holds: tables with their columns, and its tracking rows. */
async function fingerprint(schema: string): Promise<unknown> {
  const columns = await tk.knex.raw(
    `select table_name, string_agg(column_name, ',' order by column_name) as columns
       from information_schema.columns where table_schema = ? group by table_name order by table_name`,
    [schema],
  );
  const tracking = await tk.knex.withSchema(schema).from(TENANT_TRACKING_TABLE).select('*').orderBy('id');
  return { columns: columns.rows, tracking };
}

describe('changes made by plain Knex', () => {
  it('a Knex rollback on one tenant clears its digest, and migrate:tenants re-applies it without --verify', async () => {
    const [a, b] = ['org_knex_rb_a', 'org_knex_rb_b'];
    for (const orgId of [a, b]) expect((await tk.provisionTenant(orgId)).outcome).toBe('provisioned');
    const schema = schemaNameFor(a);
    // The toolkit's own writes keep the digest.
    expect(await digestOfOrg(a)).toBe(digestOf(BASIC_NAMES));

    const [, reverted] = await plainKnex(schema, BASIC, (conn, config) => conn.migrate.rollback(config));
    expect(reverted).toHaveLength(3);
    expect(await applied(tk.knex, schema)).toEqual([]);
    expect(await digestOfOrg(a)).toBeNull();
    expect(await digestOfOrg(b)).toBe(digestOf(BASIC_NAMES));

    const run = await tk.migrateTenants({ orgIds: [a, b] });
    expect(Object.fromEntries(run.tenants.map((t) => [t.orgId, [t.outcome, t.migrations]]))).toEqual({
      [a]: ['migrated', BASIC_NAMES],
      [b]: ['up-to-date', []],
    });
    expect(await applied(tk.knex, schema)).toEqual(BASIC_NAMES);
    expect(await digestOfOrg(a)).toBe(digestOf(BASIC_NAMES));
    // Knex's own lock was given back by Knex, and the toolkit's batch left it as it found it.
    expect(await lockRows(schema)).toEqual([0]);
  });

  it('tenants provisioned before the master migration got the trigger from it', async () => {
    const schema = schemaNameFor(OLD[0]!);
    expect(await hasTrigger(schema)).toBe(true);
    expect(await hasTrigger(schemaNameFor(OLD[1]!))).toBe(true);
    // A change by hand is seen like Knex's.
    await tk.knex.withSchema(schema).from(TENANT_TRACKING_TABLE).where({ name: '003_knex_extra.ts' }).delete();
    await tk.knex.raw('alter table ??.knex_items drop column extra', [schema]);
    expect(await digestOfOrg(OLD[0]!)).toBeNull();
    const run = await tk.migrateTenants({ orgIds: OLD });
    expect(Object.fromEntries(run.tenants.map((t) => [t.orgId, t.migrations]))).toEqual({
      [OLD[0]!]: ['003_knex_extra.ts'],
      [OLD[1]!]: [],
    });
  });

  it('a tracking table found without the trigger or the Knex lock table gets them in its next batch', async () => {
    const orgId = 'org_knex_adopt';
    await tk.provisionTenant(orgId);
    const schema = schemaNameFor(orgId);
    await tk.knex.raw('drop trigger tenant_migrate_tracking_changed on ??.??', [schema, TENANT_TRACKING_TABLE]);
    await tk.knex.raw('drop table ??.??', [schema, LOCK_TABLE]);
    await tk.rollbackTenants({ orgIds: [orgId], lastBatch: true });
    expect(await hasTrigger(schema)).toBe(true);
    expect(await lockRows(schema)).toEqual([0]);

    // Many at once, for schemas adopted into the registry (whose digest is trusted from then on).
    await tk.knex.raw('drop trigger tenant_migrate_tracking_changed on ??.??', [schema, TENANT_TRACKING_TABLE]);
    await tk.knex.raw('drop table ??.??', [schema, LOCK_TABLE]);
    const others = ['org_knex_rb_a', 'org_knex_rb_b'].map((id) => schemaNameFor(id));
    await addFleetCompanions(tk.knex, [schema, ...others], TENANT_TRACKING_TABLE, { trigger: true });
    for (const s of [schema, ...others]) {
      expect(await hasTrigger(s)).toBe(true);
      expect(await lockRows(s)).toEqual([0]);
    }
  });

  it('every tenant has Knex’s lock table (one row, unlocked), so plain Knex finds it as it would have made it', async () => {
    const schema = schemaNameFor('org_knex_rb_b');
    const columns = await tk.knex.raw(
      'select column_name, data_type from information_schema.columns where table_schema = ? and table_name = ? order by 1',
      [schema, LOCK_TABLE],
    );
    expect(columns.rows).toEqual([
      { column_name: 'index', data_type: 'integer' },
      { column_name: 'is_locked', data_type: 'integer' },
    ]);
    expect(await lockRows(schema)).toEqual([0]);
    const [completed, pending] = await plainKnex(schema, BASIC, (conn, config) => conn.migrate.list(config));
    expect(completed.map((m: { name: string }) => m.name)).toEqual(BASIC_NAMES);
    expect(pending).toEqual([]);
  });
});

describe("Knex's lock", () => {
  it('a stuck Knex lock row is reported, refuses the toolkit’s batch, and is cleared by migrate:unlock', async () => {
    const [stuck, fine] = ['org_knex_stuck', 'org_knex_fine'];
    const older = toolkitFor(basicUpTo(2));
    for (const orgId of [stuck, fine]) expect((await older.provisionTenant(orgId)).outcome).toBe('provisioned');
    const schema = schemaNameFor(stuck);
    // A killed `knex migrate:rollback` leaves this behind; the tenant is no longer trusted by its digest.
    await tk.knex.withSchema(schema).from(LOCK_TABLE).update({ is_locked: 1 });
    expect(await digestOfOrg(stuck)).toBeNull();
    expect(await stuckKnexLocks(tk.knex, [schemaNameFor(fine), schema, 'tid_none'], TENANT_TRACKING_TABLE)).toEqual([
      schema,
    ]);

    // migrate:status names it, with what to do.
    const status = await tk.status();
    const row = status.tenants.find((t) => t.orgId === stuck)!;
    expect(row).toMatchObject({ knexLocked: true });
    expect(row.error).toContain(`pnpm migrate:unlock --tenant ${stuck}`);
    expect(status.tenants.find((t) => t.orgId === fine)!.knexLocked).toBeUndefined();

    // The toolkit refuses the tenant as Knex would, and says how to clear it.
    const run = await tk.migrateTenants({ orgIds: [stuck, fine] });
    const refused = run.tenants.find((t) => t.orgId === stuck)!;
    expect(refused).toMatchObject({ outcome: 'failed', error: { code: 'E_KNEX_LOCKED' } });
    expect(refused.error!.message).toContain(`pnpm migrate:unlock --tenant ${stuck}`);
    expect(run.tenants.find((t) => t.orgId === fine)).toMatchObject({ outcome: 'migrated' });
    expect(await applied(tk.knex, schema)).toEqual(BASIC_NAMES.slice(0, 2));

    const env = { ...engine.env, ...folders(MASTER, BASIC), TENANT_EXTENSIONS: '' };
    if (engine.multiSession) {
      // While a toolkit run holds the tenant's lock, unlock leaves the row alone.
      await tk.knex.transaction(async (trx) => {
        await trx.raw('select pg_advisory_xact_lock(?, hashtext(?))', [LOCK_NAMESPACE, schema]);
        const held = await runCli(['migrate:unlock', '--tenant', stuck], env);
        expect(held.code, held.stderr).toBe(1);
        expect(held.stdout).toContain('a toolkit run is migrating this tenant');
      });
      expect(await lockRows(schema)).toEqual([1]);
    }
    // One process at a time opens the embedded engine: the CLI gets it while this process lets go.
    if (!engine.multiSession) await tk.close();
    const cleared = await runCli(['migrate:unlock', '--tenant', stuck, '--json'], env);
    const again = await runCli(['migrate:unlock', '--all-stuck'], env);
    if (!engine.multiSession) tk = await open(MASTER);
    expect(cleared.code, cleared.stderr).toBe(0);
    expect(JSON.parse(cleared.stdout)).toEqual({
      command: 'migrate:unlock',
      tenants: [{ orgId: stuck, schema, outcome: 'unlocked' }],
    });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain('No tenant has a stuck Knex lock');
    expect(await lockRows(schema)).toEqual([0]);
    expect(await stuckKnexLocks(tk.knex, [schema], TENANT_TRACKING_TABLE)).toEqual([]);
  });

  it('a batch outside a transaction takes Knex’s lock as Knex does, gives it back, and respects a stuck one', async () => {
    const session = toolkitFor(SESSION);
    const report = await session.provisionTenant('org_knex_session');
    expect(report).toMatchObject({
      outcome: 'provisioned',
      migrations: ['001_knex_s_items.ts', '002_knex_s_index.ts'],
    });
    const schema = schemaNameFor('org_knex_session');
    expect(await lockRows(schema)).toEqual([0]);
    expect(await digestOfOrg('org_knex_session')).toBe(digestOf(['001_knex_s_items.ts', '002_knex_s_index.ts']));

    await session.rollbackTenants({ orgIds: ['org_knex_session'], lastBatch: true });
    await tk.knex.withSchema(schema).from(LOCK_TABLE).update({ is_locked: 1 });
    const refused = await session.migrateTenants({ orgIds: ['org_knex_session'] });
    expect(refused.tenants[0]).toMatchObject({ outcome: 'failed', error: { code: 'E_KNEX_LOCKED' } });
    // Not ours to clear: still set.
    expect(await lockRows(schema)).toEqual([1]);
    await tk.knex.withSchema(schema).from(LOCK_TABLE).update({ is_locked: 0 });
  });

  it('a toolkit run and a plain Knex run on one tenant at once apply each migration once', async () => {
    const orgIds = ['org_knex_race_1', 'org_knex_race_2', 'org_knex_race_3'];
    const first = toolkitFor(basicUpTo(1));
    for (const orgId of orgIds) expect((await first.provisionTenant(orgId)).outcome).toBe('provisioned');
    for (const orgId of orgIds) expect(await applied(tk.knex, schemaNameFor(orgId))).toEqual([BASIC_NAMES[0]]);

    for (const orgId of orgIds) {
      const schema = schemaNameFor(orgId);
      const config = {
        migrationSource: tsSource(BASIC),
        schemaName: schema,
        tableName: TENANT_TRACKING_TABLE,
      };
      if (engine.multiSession) {
        // Plain Knex on its own pool (its `searchPath` setting), started together with the toolkit.
        const plain = knexFactory({
          client: 'pg',
          connection: engine.url,
          searchPath: [schema, 'public'],
          pool: { min: 0, max: 2 },
        });
        try {
          // Staggered over the tenants, so that each side is sometimes first into the batch.
          const head = orgIds.indexOf(orgId) * 150;
          const [byKnex, byToolkit] = await Promise.all([
            plain.migrate.latest(config),
            sleep(head).then(() => tk.migrateTenants({ orgIds: [orgId] })),
          ]);
          const knexApplied = (byKnex as [number, string[]])[1];
          const toolkitApplied = byToolkit.tenants[0]!.migrations;
          expect(byToolkit.tenants[0]!.error).toBeNull();
          // Each migration was applied by exactly one of them.
          expect([...knexApplied, ...toolkitApplied].sort()).toEqual(BASIC_NAMES.slice(1));
        } finally {
          await plain.destroy();
        }
      } else {
        // One connection: one after the other. Whoever comes second finds nothing to do.
        const toolkitFirst = orgId.endsWith('1');
        if (toolkitFirst) expect((await tk.migrateTenants({ orgIds: [orgId] })).tenants[0]!.migrations).toHaveLength(2);
        const [, knexApplied] = await plainKnex(schema, BASIC, (conn) => conn.migrate.latest(config));
        expect(knexApplied).toHaveLength(toolkitFirst ? 0 : 2);
        const after = await tk.migrateTenants({ orgIds: [orgId] });
        expect(after.tenants[0]).toMatchObject({ outcome: 'up-to-date', migrations: [] });
      }
      expect(await applied(tk.knex, schema)).toEqual(BASIC_NAMES);
      const tally = await tk.knex.withSchema(schema).from('knex_items').where({ note: '002 applied' }).count('*');
      expect(Number(tally[0]!.count)).toBe(1);
      expect(await lockRows(schema)).toEqual([0]);
    }
  });
});

describe('rollback', () => {
  it('a failing down in the middle of a rolled-back batch leaves the schema and its tracking rows exactly as before', async () => {
    const downFails = toolkitFor(DOWN_FAILS);
    const orgId = 'org_knex_down_fails';
    expect((await downFails.provisionTenant(orgId)).outcome).toBe('provisioned');
    const schema = schemaNameFor(orgId);
    const before = await fingerprint(schema);
    const digest = await digestOfOrg(orgId);

    const report = await downFails.rollbackTenants({ orgIds: [orgId], lastBatch: true });
    expect(report.tenants[0]).toMatchObject({
      outcome: 'failed',
      migrations: [],
      error: { migration: '002_knex_df_beta.ts' },
    });
    // 003 was reverted and 002 dropped its table before failing: all of it was rolled back.
    expect(await fingerprint(schema)).toEqual(before);
    expect(await digestOfOrg(orgId)).toBe(digest);
    const rows = await tk.knex.withSchema(schema).from('knex_df_alpha').count('*');
    expect(Number(rows[0]!.count)).toBe(2);
  });
});
