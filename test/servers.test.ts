import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/config.ts';
import { openToolkit, type Toolkit } from '../src/toolkit.ts';
import { runCli } from './support/cli.ts';
import { ROOT } from './support/engine.ts';
import {
  createDatabaseOn,
  createDatabases,
  migrationFolder,
  queryOn as query,
  requireServersOrSkip,
  type ServerDatabases,
  STOPPABLE_SERVER_URL,
  startStoppableServer,
  stopStoppableServer,
} from './support/servers.ts';

/*
 * Tenants spread over three real PostgreSQL servers (127.0.0.1:5432 holds the registry; :5433 and
 * :5434 are TENANT_SERVERS eu1 and eu2), and a fourth (:5435) that one test stops mid-run.
 */

const skip = await requireServersOrSkip();
const MASTER = path.join(ROOT, 'master-migrations');

const ITEMS = `export async function up(knex) {
  await knex.schema.createTable('items', (t) => { t.increments('id'); t.text('name'); });
}
export async function down(knex) { await knex.schema.dropTable('items'); }
`;
const NOTES = `export async function up(knex) {
  await knex.schema.createTable('notes', (t) => { t.increments('id'); t.text('body'); });
}
export async function down(knex) { await knex.schema.dropTable('notes'); }
`;
/** Slow on purpose: the server-down test stops a server while tenants are still queued. */
const SLOW_TAGS = `export async function up(knex) {
  await knex.raw('select pg_sleep(0.3)');
  await knex.schema.createTable('tags', (t) => { t.increments('id'); });
}
export async function down(knex) { await knex.schema.dropTable('tags'); }
`;
const SHARED_KV = `export async function up(knex) {
  await knex.raw('create table public.shared_kv (k text primary key, v text)');
}
export async function down(knex) { await knex.raw('drop table public.shared_kv'); }
`;

async function schemasOn(url: string): Promise<string[]> {
  const rows = await query<{ nspname: string }>(
    url,
    "select nspname from pg_namespace where nspname like 'tid\\_%' order by 1",
  );
  return rows.map((r) => r.nspname);
}

async function tablesIn(url: string, schema: string): Promise<string[]> {
  const rows = await query<{ relname: string }>(
    url,
    `select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = $1 and c.relkind = 'r' and c.relname not like 'knex\\_%' order by 1`,
    [schema],
  );
  return rows.map((r) => r.relname);
}

describe.skipIf(skip)('tenants on several servers', () => {
  let dbs: ServerDatabases;
  let tenantDir: string;
  let sharedDir: string;
  let tk: Toolkit;
  let env: Record<string, string>;
  const urlOf = (server: string | null): string =>
    server === 'eu1' ? dbs.extra[0]! : server === 'eu2' ? dbs.extra[1]! : dbs.main;
  const registry = () =>
    query<{ org: string; schema: string; server: string | null; status: string }>(
      dbs.main,
      'select clerk_org_id as org, schema_name as schema, server, status from public.tenants order by id',
    );

  beforeAll(async () => {
    dbs = await createDatabases('servers');
    tenantDir = migrationFolder({ '001_items.js': ITEMS });
    sharedDir = migrationFolder({ '001_shared_kv.js': SHARED_KV });
    env = {
      ...dbs.env(),
      MASTER_MIGRATIONS_DIR: MASTER,
      TENANT_MIGRATIONS_DIR: tenantDir,
      SHARED_MIGRATIONS_DIR: sharedDir,
      TENANT_EXTENSIONS: '',
    };
    tk = await openToolkit(loadConfig(env, ROOT));
  });
  afterAll(async () => {
    await tk?.close();
    await dbs?.drop();
  });

  it('migrate:master: the master migrations on main, the shared ones on every server, each tracked there', async () => {
    const first = await runCli(['migrate:master', '--json'], env);
    expect(first.code, first.stderr).toBe(0);
    const report = JSON.parse(first.stdout);
    expect(report.migrations).toContain('20261203000001_tenant_servers.ts');
    expect(report.shared.map((s: { server: string }) => s.server)).toEqual(['main', 'eu1', 'eu2']);
    for (const s of report.shared) expect(s.report.migrations).toEqual(['001_shared_kv.js']);
    for (const url of [dbs.main, ...dbs.extra]) {
      const [row] = await query<{ kv: boolean; tracked: number }>(
        url,
        `select to_regclass('public.shared_kv') is not null as kv,
                (select count(*)::int from public.knex_migrations_shared) as tracked`,
      );
      expect(row).toEqual({ kv: true, tracked: 1 });
    }
    // The registry and the master history stay on the main server.
    for (const url of dbs.extra) {
      const [row] = await query<{ tenants: boolean; master: boolean }>(
        url,
        `select to_regclass('public.tenants') is not null as tenants,
                to_regclass('public.knex_migrations_master') is not null as master`,
      );
      expect(row).toEqual({ tenants: false, master: false });
    }
    const again = await runCli(['migrate:master'], env);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain('Already up to date');
    expect(again.stdout).toMatch(/Shared migrations on eu2 \(127\.0\.0\.1:5434\/servers_\w+\): up to date/);
  });

  it('provisions on --server, else by the placement rule; each schema exists on its server only', async () => {
    const a = await tk.provisionTenant('org_srv_a', { server: 'eu2' });
    expect(a.outcome, a.error?.message).toBe('provisioned');
    const b = await runCli(['provision:tenant', 'org_srv_b', '--server', 'eu1', '--json'], env);
    expect(b.code, b.stderr).toBe(0);
    expect(JSON.parse(b.stdout).outcome).toBe('provisioned');
    // Fewest tenants first, ties to the earlier server (main, eu1, eu2): main, main, eu1, eu2.
    for (const org of ['org_srv_c', 'org_srv_d', 'org_srv_e', 'org_srv_f']) {
      const report = await tk.provisionTenant(org);
      expect(report.outcome, report.error?.message).toBe('provisioned');
    }
    const rows = await registry();
    expect(rows.map((r) => [r.org, r.server, r.status])).toEqual([
      ['org_srv_a', 'eu2', 'ACTIVE'],
      ['org_srv_b', 'eu1', 'ACTIVE'],
      ['org_srv_c', null, 'ACTIVE'],
      ['org_srv_d', null, 'ACTIVE'],
      ['org_srv_e', 'eu1', 'ACTIVE'],
      ['org_srv_f', 'eu2', 'ACTIVE'],
    ]);
    for (const server of [null, 'eu1', 'eu2']) {
      const expected = rows.filter((r) => r.server === server).map((r) => r.schema);
      expect(await schemasOn(urlOf(server))).toEqual([...expected].sort());
      for (const schema of expected) {
        expect(await tablesIn(urlOf(server), schema)).toEqual(['items']);
        const tracked = await query<{ name: string }>(
          urlOf(server),
          `select name from "${schema}".knex_migrations_tenant order by id`,
        );
        expect(tracked.map((t) => t.name)).toEqual(['001_items.js']);
      }
    }
    // The provisioning ledger: one run per provisioning, on main, whichever server the tenant is on.
    const [ledger] = await query<{ n: number }>(
      dbs.main,
      "select count(*)::int as n from public.tenant_migration_runs where kind = 'provision'",
    );
    expect(ledger!.n).toBe(6);
    // Provisioning again is a no-op on its own server; asking for another server is refused.
    expect((await tk.provisionTenant('org_srv_a')).outcome).toBe('already-active');
    await expect(tk.provisionTenant('org_srv_a', { server: 'eu1' })).rejects.toThrow(/registered on server eu2/);
    const unknown = await runCli(['provision:tenant', 'org_srv_x', '--server', 'eu9'], env);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr.trim().split('\n')).toHaveLength(1);
    expect(unknown.stderr).toMatch(/no server named "eu9"/);
    expect((await registry()).map((r) => r.org)).not.toContain('org_srv_x');
  });

  it('migrate:tenants and rollback:tenants run each server’s tenants on that server; --server selects', async () => {
    writeFileSync(path.join(tenantDir, '002_notes.js'), NOTES);
    const only = await runCli(['migrate:tenants', '--server', 'eu1', '--json'], env);
    expect(only.code, only.stderr).toBe(0);
    const onlyReport = JSON.parse(only.stdout);
    expect(onlyReport.tenants.map((t: { orgId: string }) => t.orgId).sort()).toEqual(['org_srv_b', 'org_srv_e']);
    expect(onlyReport.totals.migrated).toBe(2);

    const all = await runCli(['migrate:tenants', '--json'], env);
    expect(all.code, all.stderr).toBe(0);
    const report = JSON.parse(all.stdout);
    expect(report.totals).toMatchObject({ migrated: 4, 'up-to-date': 2, failed: 0 });
    for (const row of await registry()) {
      expect(await tablesIn(urlOf(row.server), row.schema)).toEqual(['items', 'notes']);
    }
    // The run's ledger rows, on main, one per tenant it changed, wherever the tenant lives.
    const ledger = await query<{ schema_name: string }>(
      dbs.main,
      'select schema_name from public.tenant_migration_run_tenants where run_id = $1 order by 1',
      [report.runId],
    );
    expect(ledger).toHaveLength(4);
    // A no-op rerun reads the remote tenants' tracking tables (no trigger there): still up to date.
    const fresh = await openToolkit(loadConfig(env, ROOT)); // tk read the folder before 002 was added
    try {
      const noop = await fresh.migrateTenants();
      expect(noop.totals).toMatchObject({ 'up-to-date': 6, migrated: 0, failed: 0 });
    } finally {
      await fresh.close();
    }

    // The rollback is scoped to the last deploy run: the four tenants it migrated, on their servers.
    const back = await runCli(['rollback:tenants', '--json'], env);
    expect(back.code, back.stderr).toBe(0);
    const backReport = JSON.parse(back.stdout);
    expect(backReport.totals.migrated).toBe(4);
    const rows = await registry();
    for (const row of rows) {
      const expected = ['org_srv_b', 'org_srv_e'].includes(row.org) ? ['items', 'notes'] : ['items'];
      expect(await tablesIn(urlOf(row.server), row.schema)).toEqual(expected);
    }
    expect((await runCli(['migrate:tenants'], env)).code).toBe(0);
  });

  it('a server stopped mid-run fails its tenants with one line; the others migrate; a rerun completes', async () => {
    const down = await createDatabaseOn(STOPPABLE_SERVER_URL, `${dbs.name}_down`);
    const stopEnv = { ...env, TENANT_SERVERS: `eu1=${dbs.extra[0]},eu3=${down.url}` };
    const dir = migrationFolder({ '001_items.js': ITEMS });
    const open = () => openToolkit(loadConfig({ ...stopEnv, TENANT_MIGRATIONS_DIR: dir }, ROOT));
    let stk = await open();
    try {
      expect((await stk.migrateShared()).every((s) => s.report.error === null)).toBe(true);
      const orgs = ['org_dn_1', 'org_dn_2', 'org_dn_3', 'org_dn_4'];
      for (const org of orgs) {
        expect((await stk.provisionTenant(org, { server: 'eu3' })).outcome).toBe('provisioned');
        expect((await stk.provisionTenant(`${org}_up`, { server: 'eu1' })).outcome).toBe('provisioned');
      }
      writeFileSync(path.join(dir, '002_tags.js'), SLOW_TAGS);
      await stk.close();
      stk = await open();
      let stopped = false;
      const report = await stk.migrateTenants({
        orgIds: [...orgs, ...orgs.map((o) => `${o}_up`)],
        concurrency: 1,
        onTenant: (t) => {
          // After the first tenant on eu3 is done, eu3 goes down while its others are queued.
          if (!stopped && t.orgId.startsWith('org_dn_') && !t.orgId.endsWith('_up')) {
            stopped = true;
            stopStoppableServer();
          }
        },
      });
      const byOrg = new Map(report.tenants.map((t) => [t.orgId, t]));
      for (const org of orgs) expect(byOrg.get(`${org}_up`)!.outcome).toBe('migrated');
      const onDown = orgs.map((o) => byOrg.get(o)!);
      expect(onDown.filter((t) => t.outcome === 'migrated')).toHaveLength(1);
      const failed = onDown.filter((t) => t.outcome === 'failed');
      expect(failed).toHaveLength(3);
      for (const t of failed) {
        expect(t.error!.message).toMatch(/^server eu3 \(127\.0\.0\.1:5435\/\w+\) is unreachable: /);
        expect(t.error!.message.split('\n')).toHaveLength(1);
      }
      await startStoppableServer();
      const rerun = await stk.migrateTenants({ orgIds: orgs });
      expect(rerun.totals).toMatchObject({ migrated: 3, 'up-to-date': 1, failed: 0 });
      for (const org of orgs) {
        const [row] = await query<{ schema: string }>(
          dbs.main,
          'select schema_name as schema from public.tenants where clerk_org_id = $1',
          [org],
        );
        expect(await tablesIn(down.url, row!.schema)).toEqual(['items', 'tags']);
      }
    } finally {
      await startStoppableServer().catch(() => undefined);
      await stk.close();
      await down.drop().catch(() => undefined);
    }
  });
});
