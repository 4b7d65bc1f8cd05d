import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, type ToolkitConfig } from '../src/config/config.ts';
import { LOCK_NAMESPACE } from '../src/db/locks.ts';
import { withoutTriggers } from '../src/db/pg-copy.ts';
import { Servers } from '../src/db/servers.ts';
import { leftoverMarker, type MoveContext, moveTenant } from '../src/provisioning/move.ts';
import { compareSnapshots, type SchemaSnapshot } from '../src/provisioning/move-verify.ts';
import { createTenantClient } from '../src/runtime/client.ts';
import { TenantMovingError, TenantUnavailableError } from '../src/runtime/errors.ts';
import { openToolkit, type Toolkit } from '../src/toolkit.ts';
import { runCli } from './support/cli.ts';
import { ROOT } from './support/engine.ts';
import {
  createDatabaseOn,
  createDatabases,
  MAIN_SERVER_URL,
  migrationFolder,
  queryOn as query,
  requireServersOrSkip,
  type ServerDatabases,
} from './support/servers.ts';

/*
 * `tenant:move` on three real PostgreSQL servers (127.0.0.1:5432 holds the registry; :5433 and
 * :5434 are TENANT_SERVERS eu1 and eu2), with the real pg_dump and pg_restore.
 */

const MASTER = path.join(ROOT, 'master-migrations');
const ITEMS = `export async function up(knex) {
  await knex.schema.createTable('items', (t) => { t.increments('id'); t.text('name').notNullable(); t.integer('qty'); });
  await knex.raw('create index items_name_idx on items (lower(name))');
  await knex.raw("alter table items add constraint items_qty_check check (qty >= 0)");
}
export async function down(knex) { await knex.schema.dropTable('items'); }
`;
const NOTES = `export async function up(knex) {
  await knex.schema.createTable('notes', (t) => { t.increments('id'); t.integer('item_id').references('id').inTable('items'); t.text('body'); });
}
export async function down(knex) { await knex.schema.dropTable('notes'); }
`;
const TAGS = `export async function up(knex) {
  await knex.schema.createTable('tags', (t) => { t.increments('id'); t.text('tag'); });
}
export async function down(knex) { await knex.schema.dropTable('tags'); }
`;

async function schemaExists(url: string, schema: string): Promise<boolean> {
  const [row] = await query<{ present: boolean }>(url, 'select to_regnamespace($1) is not null as present', [schema]);
  return row!.present;
}

/** What a copy must keep: rows, tracking rows, indexes and constraints (the names of the schema replaced). */
async function contents(url: string, schema: string): Promise<unknown> {
  const [items] = await query<{ rows: unknown }>(
    url,
    `select json_agg(i order by id) as rows from "${schema}".items i`,
  );
  const tracking = await query(url, `select id, name, batch from "${schema}".knex_migrations_tenant order by id`);
  const indexes = await query<{ def: string }>(
    url,
    'select indexdef as def from pg_indexes where schemaname = $1 order by indexname',
    [schema],
  );
  const constraints = await query<{ name: string; def: string }>(
    url,
    `select conname as name, pg_get_constraintdef(c.oid) as def from pg_constraint c
      join pg_namespace n on n.oid = c.connamespace where n.nspname = $1 order by 1`,
    [schema],
  );
  const [seq] = await query<{ v: string }>(url, `select last_value::text as v from "${schema}".items_id_seq`);
  return { items: items!.rows, tracking, indexes, constraints, seq: seq!.v };
}

describe('tenant:move, the pure parts', () => {
  it('leaves out only the named triggers of the schema from the restore list', () => {
    const toc = [
      '; Selected TOC Entries:',
      '216; 1259 16789 TABLE tid_aa knex_migrations_tenant postgres',
      '3201; 2620 16800 TRIGGER tid_aa knex_migrations_tenant tenant_migrate_tracking_changed postgres',
      '3202; 2620 16801 TRIGGER tid_aa items audit postgres',
      '3203; 2620 16802 TRIGGER tid_bb knex_migrations_tenant tenant_migrate_tracking_changed postgres',
    ].join('\n');
    const out = withoutTriggers(toc, 'tid_aa', ['tenant_migrate_tracking_changed']).split('\n');
    expect(out[2]).toMatch(/^;3201; /);
    expect(out.filter((l) => l.startsWith(';3'))).toHaveLength(1);
  });

  it('compares tracking rows, counts, sequences and catalog objects, one line per difference', () => {
    const side = (rows: string, extra = false): SchemaSnapshot => ({
      tracking: [{ id: 1, name: '001_items.js', batch: 1, at: '1' }],
      data: new Map([
        ['table items', rows],
        ['sequence items_id_seq', '3 true'],
      ]),
      objects: [
        { key: 'table items', definition: 'rp' },
        ...(extra ? [{ key: 'index items_extra', definition: 'CREATE INDEX …' }] : []),
      ],
    });
    expect(compareSnapshots(side('3'), side('3'), { source: 'main', target: 'eu1' })).toEqual([]);
    expect(compareSnapshots(side('3'), side('4', true), { source: 'main', target: 'eu1' })).toEqual([
      'table items: 3 on main, 4 on eu1',
      'index items_extra: only on eu1',
    ]);
  });
});

const skip = await requireServersOrSkip();

describe.skipIf(skip)('tenant:move on real servers', () => {
  let dbs: ServerDatabases;
  let tenantDir: string;
  let env: Record<string, string>;
  let config: ToolkitConfig;
  let tk: Toolkit;
  const urlOf = (server: string | null): string =>
    server === 'eu1' ? dbs.extra[0]! : server === 'eu2' ? dbs.extra[1]! : dbs.main;
  const row = async (org: string) =>
    (
      await query<{ schema: string; server: string | null; status: string; digest: string | null }>(
        dbs.main,
        'select schema_name as schema, server, status, migrations_digest as digest from public.tenants where clerk_org_id = $1',
        [org],
      )
    )[0]!;
  const provisionWithData = async (org: string, server = 'main'): Promise<string> => {
    const report = await tk.provisionTenant(org, { server });
    expect(report.outcome, report.error?.message).toBe('provisioned');
    await query(
      urlOf(server),
      `insert into "${report.schema}".items (name, qty) select 'item ' || g, g from generate_series(1, 25) g`,
    );
    await query(urlOf(server), `delete from "${report.schema}".items where id = 25`);
    return report.schema;
  };

  beforeAll(async () => {
    dbs = await createDatabases('move');
    tenantDir = migrationFolder({ '001_items.js': ITEMS, '002_notes.js': NOTES });
    env = { ...dbs.env(), MASTER_MIGRATIONS_DIR: MASTER, TENANT_MIGRATIONS_DIR: tenantDir, TENANT_EXTENSIONS: '' };
    config = loadConfig(env, ROOT);
    tk = await openToolkit(config);
    expect((await tk.migrateMaster()).error).toBeNull();
  });
  afterAll(async () => {
    await tk?.close();
    await dbs?.drop();
  });

  it('refuses bad input with one line and exit 2, changing nothing', async () => {
    const schema = await provisionWithData('org_mv_refused');
    const refused = async (args: string[], pattern: RegExp, over: Record<string, string> = env) => {
      const result = await runCli(['tenant:move', ...args], over);
      expect(result.code, result.stderr).toBe(2);
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
      expect(result.stderr).toMatch(pattern);
    };
    await refused(['org_mv_refused', '--to', 'eu9'], /no server named "eu9"/);
    const { TENANT_SERVERS: _, ...single } = env;
    await refused(['org_mv_refused', '--to', 'eu1'], /no TENANT_SERVERS are configured/, single);
    // The same refusals through the library: UsageError, exit code 2, one line.
    const rejects = (orgId: string, to: string, pattern: RegExp) =>
      expect(tk.moveTenant(orgId, { to })).rejects.toMatchObject({
        exitCode: 2,
        message: expect.stringMatching(pattern),
      });
    await rejects('org_mv_refused', 'main', /already lives on server main/);
    await rejects('org_mv_nobody', 'eu1', /^Not registered: org_mv_nobody/);
    await tk.archiveTenant('org_mv_refused');
    await refused(['org_mv_refused', '--to', 'eu1'], /is ARCHIVED: only an ACTIVE tenant is moved/);
    expect(await row('org_mv_refused')).toMatchObject({ server: null, status: 'ARCHIVED' });
    expect(await schemaExists(dbs.extra[0]!, schema)).toBe(false);

    // A registry from before the servers column.
    const old = await createDatabaseOn(MAIN_SERVER_URL, `${dbs.name}_old`);
    const master = mkdtempSync(path.join(os.tmpdir(), 'move-master-'));
    cpSync(MASTER, master, { recursive: true });
    rmSync(path.join(master, '20261203000001_tenant_servers.ts'));
    try {
      const oldEnv = { ...env, DATABASE_URL: old.url, MASTER_MIGRATIONS_DIR: master };
      const oldTk = await openToolkit(loadConfig(oldEnv, ROOT));
      try {
        expect((await oldTk.migrateMaster()).error).toBeNull();
      } finally {
        await oldTk.close();
      }
      await refused(
        ['org_mv_refused', '--to', 'eu1'],
        /does not record servers yet: run `pnpm migrate:master`/,
        oldEnv,
      );
    } finally {
      await old.drop();
    }
  });

  it('moves a tenant: data, tracking rows, indexes equal on the target; registry switched; source kept until drop-source', async () => {
    const schema = await provisionWithData('org_mv_a');
    const before = await contents(dbs.main, schema);
    const moved = await runCli(['tenant:move', 'org_mv_a', '--to', 'eu1', '--json'], env);
    expect(moved.code, moved.stderr).toBe(0);
    const report = JSON.parse(moved.stdout);
    expect(report).toMatchObject({ command: 'tenant:move', outcome: 'moved', from: 'main', to: 'eu1', error: null });
    expect(report.steps.map((s: { step: string; ok: boolean }) => [s.step, s.ok])).toEqual(
      ['lock', 'mark', 'quiesce', 'prepare-target', 'dump', 'restore', 'verify', 'switch'].map((s) => [s, true]),
    );
    // 24 items, 2 tracking rows, Knex's lock row.
    expect(report.verification).toMatchObject({ trackingRows: 2, rows: 24 + 2 + 1 });
    expect(await contents(dbs.extra[0]!, schema)).toEqual(before);
    expect(await row('org_mv_a')).toMatchObject({ server: 'eu1', status: 'ACTIVE' });
    // The schema's marker went with the switch; the registry's tracking trigger is not on eu1.
    const [comment] = await query<{ c: string | null; triggers: number }>(
      dbs.extra[0]!,
      `select obj_description($1::regnamespace, 'pg_namespace') as c,
              (select count(*)::int from pg_trigger t join pg_class c on c.oid = t.tgrelid
                where c.relnamespace = $1::regnamespace and t.tgname = 'tenant_migrate_tracking_changed') as triggers`,
      [schema],
    );
    expect(comment).toEqual({ c: null, triggers: 0 });
    // The source is kept, as it was.
    expect(await contents(dbs.main, schema)).toEqual(before);

    // The text report: one line per step with its time.
    const text = await runCli(['tenant:move', 'org_mv_a', '--to', 'eu1'], env);
    expect(text.code).toBe(2); // already there

    const refused = await runCli(['tenant:drop-source', 'org_mv_a', '--server', 'eu1'], env);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/lives on server eu1 \(the registry says so\)/);
    const dropped = await runCli(['tenant:drop-source', 'org_mv_a', '--server', 'main', '--json'], env);
    expect(dropped.code, dropped.stderr).toBe(0);
    expect(JSON.parse(dropped.stdout)).toMatchObject({ outcome: 'dropped', server: 'main' });
    expect(await schemaExists(dbs.main, schema)).toBe(false);
    expect(await schemaExists(dbs.extra[0]!, schema)).toBe(true);
    const again = await runCli(['tenant:drop-source', 'org_mv_a', '--server', 'main'], env);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/has no schema/);
  });

  it('--drop-source drops the old copy right after the switch; a move back to main gets the tracking trigger', async () => {
    const schema = (await row('org_mv_a')).schema;
    const before = await contents(dbs.extra[0]!, schema);
    const moved = await runCli(['tenant:move', 'org_mv_a', '--to', 'eu2', '--drop-source'], env);
    expect(moved.code, moved.stderr).toBe(0);
    const lines = moved.stdout.trim().split('\n');
    for (const step of [
      'lock',
      'mark',
      'quiesce',
      'prepare-target',
      'dump',
      'restore',
      'verify',
      'switch',
      'drop-source',
    ]) {
      expect(
        lines.some((l) => new RegExp(`✓ ${step}\\s+\\d+(\\.\\d)? m?s`).test(l)),
        step,
      ).toBe(true);
    }
    expect(moved.stdout).toMatch(/Moved org_mv_a \(tid_\w+\) from eu1 to eu2/);
    expect(await schemaExists(dbs.extra[0]!, schema)).toBe(false);
    expect(await contents(dbs.extra[1]!, schema)).toEqual(before);

    const home = await tk.moveTenant('org_mv_a', { to: 'main', dropSource: true });
    expect(home.outcome, home.error?.message).toBe('moved');
    expect(home.sourceDropped).toBe(true);
    expect(await row('org_mv_a')).toMatchObject({ server: null, status: 'ACTIVE' });
    const [triggers] = await query<{ n: number }>(
      dbs.main,
      `select count(*)::int as n from pg_trigger t join pg_class c on c.oid = t.tgrelid
        where c.relnamespace = $1::regnamespace and t.tgname = 'tenant_migrate_tracking_changed'`,
      [schema],
    );
    expect(triggers!.n).toBe(2);
    expect(await contents(dbs.main, schema)).toEqual(before);
  });

  it('migrate:tenants after a move migrates the tenant on its new server, not the kept copy', async () => {
    const schema = await provisionWithData('org_mv_b');
    const moved = await tk.moveTenant('org_mv_b', { to: 'eu2' });
    expect(moved.outcome, moved.error?.message).toBe('moved');
    writeFileSync(path.join(tenantDir, '003_tags.js'), TAGS);
    const run = await runCli(['migrate:tenants', '--tenant', 'org_mv_b', '--json'], env);
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).tenants[0]).toMatchObject({ outcome: 'migrated', server: 'eu2' });
    const tagsOn = async (url: string) =>
      (await query<{ t: boolean }>(url, 'select to_regclass($1) is not null as t', [`${schema}.tags`]))[0]!.t;
    expect(await tagsOn(dbs.extra[1]!)).toBe(true);
    expect(await tagsOn(dbs.main)).toBe(false); // the kept source copy is left alone
    expect((await runCli(['migrate:tenants'], env)).code).toBe(0); // every other tenant, too
  });

  it('waits for the tenant lock held by a migration, and refuses a MOVING tenant whose lock is held', async () => {
    const schema = await provisionWithData('org_mv_c');
    const holder = new pg.Client({ connectionString: dbs.main });
    await holder.connect();
    try {
      await holder.query('select pg_advisory_lock($1, hashtext($2))', [LOCK_NAMESPACE, schema]);
      const move = tk.moveTenant('org_mv_c', { to: 'eu1' });
      // Until the move waits for the lock on main (a migration holds it): nothing is marked meanwhile.
      for (let waiting = false; !waiting; ) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        const [w] = await query<{ n: number }>(
          dbs.main,
          "select count(*)::int as n from pg_locks where locktype = 'advisory' and not granted and database = (select oid from pg_database where datname = current_database())",
        );
        waiting = w!.n > 0;
      }
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect((await row('org_mv_c')).status).toBe('ACTIVE');
      await holder.query('select pg_advisory_unlock($1, hashtext($2))', [LOCK_NAMESPACE, schema]);
      const report = await move;
      expect(report.outcome, report.error?.message).toBe('moved');
      expect(report.steps[0]!.durationMs).toBeGreaterThanOrEqual(250);

      // A move running right now (its lock held on the source, the tenant MOVING): refused.
      const holderEu1 = new pg.Client({ connectionString: dbs.extra[0]! });
      await holderEu1.connect();
      try {
        await holderEu1.query('select pg_advisory_lock($1, hashtext($2))', [LOCK_NAMESPACE, schema]);
        await query(dbs.main, "update public.tenants set status = 'MOVING' where clerk_org_id = 'org_mv_c'");
        const busy = await runCli(['tenant:move', 'org_mv_c', '--to', 'eu2'], env);
        expect(busy.code).toBe(2);
        expect(busy.stderr).toMatch(/is being moved right now \(its lock on eu1 is held\)/);
      } finally {
        await holderEu1.end();
      }
    } finally {
      await holder.end();
    }
  });

  it('a crashed move (MOVING, lock free, a partial copy on the target) is left alone by tenants:retry and redone by tenant:move', async () => {
    const schema = (await row('org_mv_c')).schema; // MOVING on eu1 since the test before, lock now free
    expect(await row('org_mv_c')).toMatchObject({ server: 'eu1', status: 'MOVING' });
    // What a crash during the restore leaves on the target: the marked schema, half filled.
    await query(
      dbs.extra[1]!,
      `create schema "${schema}"; comment on schema "${schema}" is '${leftoverMarker('org_mv_c')}';
       create table "${schema}".items (id int)`,
    );
    const retry = await tk.retryTenants();
    expect(retry.tenants.map((t) => t.orgId)).not.toContain('org_mv_c');
    expect((await row('org_mv_c')).status).toBe('MOVING');

    const before = await contents(dbs.extra[0]!, schema);
    const report = await tk.moveTenant('org_mv_c', { to: 'eu2' });
    expect(report).toMatchObject({ outcome: 'moved', resumed: true, leftoverDropped: true });
    expect(await contents(dbs.extra[1]!, schema)).toEqual(before);
    expect(await row('org_mv_c')).toMatchObject({ server: 'eu2', status: 'ACTIVE' });

    // A schema of that name that no move of this tenant left (an older copy kept on eu1): refused.
    const back = await runCli(['tenant:move', 'org_mv_c', '--to', 'eu1'], env);
    expect(back.code).toBe(2);
    expect(back.stderr).toMatch(/already has a schema tid_\w+ that no move of org_mv_c left unfinished/);
  });

  it('a restore that fails half-way leaves the tenant ACTIVE and served on its source, nothing lost, nothing left on the target', async () => {
    const schema = await provisionWithData('org_mv_d');
    // A type that only the main server has: pg_restore on eu1 fails on the column using it.
    await query(
      dbs.main,
      `create type public.mood as enum ('happy', 'sad');
       alter table "${schema}".items add column mood public.mood default 'happy'`,
    );
    const before = await contents(dbs.main, schema);
    const failed = await runCli(['tenant:move', 'org_mv_d', '--to', 'eu1'], env);
    expect(failed.code).toBe(1);
    expect(failed.stdout).toMatch(/✓ dump/);
    expect(failed.stdout).toMatch(/✗ restore .*pg_restore failed .*type "public\.mood" does not exist/);
    expect(failed.stdout).toMatch(/FAILED at restore/);
    expect(failed.stdout).toMatch(/ACTIVE on main, served from there; the copy on eu1 was dropped/);
    expect(await row('org_mv_d')).toMatchObject({ server: null, status: 'ACTIVE' });
    expect(await schemaExists(dbs.extra[0]!, schema)).toBe(false);
    expect(await contents(dbs.main, schema)).toEqual(before);
    const client = createTenantClient({ knex: tk.knex });
    const served = await client.withTenant('org_mv_d', (trx) => trx('items').count({ n: '*' }).first());
    expect(Number(served?.n)).toBe(24);
  });

  it('a verification mismatch (a test hook changes the copy) fails the move; the runtime refused the tenant while it was MOVING', async () => {
    const schema = await provisionWithData('org_mv_e');
    const before = await contents(dbs.main, schema);
    const servers = new Servers(config, tk.knex);
    const ctx: MoveContext = { knex: tk.knex, servers, config };
    const client = createTenantClient({ knex: tk.knex, cache: { ttlMs: 3_600_000 } });
    await client.withTenant('org_mv_e', async () => undefined); // cached as ACTIVE
    let duringMove: unknown;
    try {
      const report = await moveTenant(
        ctx,
        'org_mv_e',
        { to: 'eu2' },
        {
          afterRestore: async (target, s) => {
            duringMove = await client.withTenant('org_mv_e', async () => 'served').catch((error: unknown) => error);
            await target.raw('insert into ??.items (name, qty) values (?, ?)', [s, 'only on the copy', 1]);
          },
        },
      );
      expect(report.outcome).toBe('failed');
      expect(report.error).toMatchObject({ step: 'verify', code: 'E_MOVE_MISMATCH' });
      expect(report.error!.message).toMatch(/table items: 24 on main, 25 on eu2/);
      expect(report.cleanup).toEqual({ targetDropped: true, reverted: true, problems: [] });
    } finally {
      await servers.close();
    }
    expect(duringMove).toBeInstanceOf(TenantMovingError);
    expect(duringMove).toBeInstanceOf(TenantUnavailableError);
    expect(duringMove).toMatchObject({ code: 'E_TENANT_MOVING', httpStatus: 503, reason: 'moving' });
    expect((duringMove as Error).message).toMatch(/retry shortly/);
    expect(await row('org_mv_e')).toMatchObject({ server: null, status: 'ACTIVE' });
    expect(await schemaExists(dbs.extra[1]!, schema)).toBe(false);
    expect(await contents(dbs.main, schema)).toEqual(before);
    expect(await client.withTenant('org_mv_e', async () => 'served')).toBe('served');
  });

  it('waits for a transaction begun before the move (the runtime found the tenant ACTIVE): its write is in the copy', async () => {
    const schema = await provisionWithData('org_mv_f');
    const app = new pg.Client({ connectionString: dbs.main });
    await app.connect();
    try {
      await app.query('begin');
      await app.query(`insert into "${schema}".items (name, qty) values ('written while the move starts', 1)`);
      const move = tk.moveTenant('org_mv_f', { to: 'eu1' });
      while ((await row('org_mv_f')).status !== 'MOVING') await new Promise((resolve) => setTimeout(resolve, 50));
      await new Promise((resolve) => setTimeout(resolve, 300));
      await app.query('commit');
      const report = await move;
      expect(report.outcome, report.error?.message).toBe('moved');
      expect(report.steps.find((s) => s.step === 'quiesce')!.detail).toMatch(/^waited \d+ ms for earlier transactions/);
      const [copy] = await query<{ n: number }>(dbs.extra[0]!, `select count(*)::int as n from "${schema}".items`);
      expect(copy!.n).toBe(25);
    } finally {
      await app.end();
    }
  });

  it('fails at quiesce, changing nothing, while a deploy run is in progress (it may have listed the tenant)', async () => {
    const schema = await provisionWithData('org_mv_g');
    const [run] = await query<{ id: string }>(
      dbs.main,
      `insert into public.tenant_migration_runs (command, kind, direction, host, pid, toolkit_version, folder_digest)
       values ('migrate:tenants', 'deploy', 'up', 'elsewhere', 1, '0', 'x') returning id`,
    );
    try {
      const report = await tk.moveTenant('org_mv_g', { to: 'eu2' });
      expect(report.outcome).toBe('failed');
      expect(report.error).toMatchObject({ step: 'quiesce', code: 'E_RUN_IN_PROGRESS' });
      expect(report.error!.message).toMatch(new RegExp(`a fleet run is in progress \\(#${run!.id} migrate:tenants\\)`));
      expect(report.cleanup).toEqual({ targetDropped: false, reverted: true, problems: [] });
      expect(await row('org_mv_g')).toMatchObject({ server: null, status: 'ACTIVE' });
      expect(await schemaExists(dbs.extra[1]!, schema)).toBe(false);
    } finally {
      await query(dbs.main, "update public.tenant_migration_runs set outcome = 'interrupted' where id = $1", [run!.id]);
    }
  });
});
