import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/config.ts';
import { LOCK_NAMESPACE } from '../src/db/locks.ts';
import { collectFleetReport } from '../src/report/fleet.ts';
import { renderFleetHtml } from '../src/report/html.ts';
import { schemaNameFor } from '../src/tenants/naming.ts';
import { openToolkit, type Toolkit } from '../src/toolkit.ts';
import { runCli } from './support/cli.ts';
import { ROOT } from './support/engine.ts';
import {
  createDatabases,
  migrationFolder,
  queryOn as query,
  requireServersOrSkip,
  type ServerDatabases,
} from './support/servers.ts';

/*
 * The fleet commands on tenants spread over three real servers (127.0.0.1:5432 holds the
 * registry; :5433 and :5434 are TENANT_SERVERS eu1 and eu2): tenant:archive, tenant:restore and
 * tenant:drop on the tenant's server, tenants:run on each server's pool, migrate:status,
 * tenants:list and the fleet report naming servers, and a server that does not answer (a
 * configured URL on a port where nothing listens) reported without hiding the others.
 */

const skip = await requireServersOrSkip();
const MASTER = path.join(ROOT, 'master-migrations');
/** Nothing listens there: the "server down" of these tests (the real clusters are never stopped). */
const NOWHERE = 'postgres://postgres@127.0.0.1:5499/nowhere';

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

/** Two tenants per server: main, eu1, eu2. */
const ORGS = {
  main: ['org_fl_m1', 'org_fl_m2'],
  eu1: ['org_fl_a1', 'org_fl_a2'],
  eu2: ['org_fl_b1', 'org_fl_b2'],
} as const;
const PORTS: Record<string, number> = { main: 5432, eu1: 5433, eu2: 5434 };

async function schemaOn(url: string, schema: string): Promise<boolean> {
  const [row] = await query<{ present: boolean }>(
    url,
    'select exists (select 1 from pg_namespace where nspname = $1) as present',
    [schema],
  );
  return row!.present;
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

describe.skipIf(skip)('fleet commands on tenants on several servers', () => {
  let dbs: ServerDatabases;
  let tenantDir: string;
  let env: Record<string, string>;
  let tk: Toolkit;
  const urlOf = (server: string): string =>
    server === 'eu1' ? dbs.extra[0]! : server === 'eu2' ? dbs.extra[1]! : dbs.main;
  const open = (extra: Record<string, string> = {}) => openToolkit(loadConfig({ ...env, ...extra }, ROOT));

  beforeAll(async () => {
    dbs = await createDatabases('srvfleet');
    tenantDir = migrationFolder({ '001_items.js': ITEMS });
    env = {
      ...dbs.env(),
      MASTER_MIGRATIONS_DIR: MASTER,
      TENANT_MIGRATIONS_DIR: tenantDir,
      SHARED_MIGRATIONS_DIR: path.join(tenantDir, 'no-shared-migrations'),
      TENANT_EXTENSIONS: '',
    };
    tk = await open();
    expect((await tk.migrateMaster()).error).toBeNull();
    for (const [server, orgs] of Object.entries(ORGS)) {
      for (const org of orgs) {
        const report = await tk.provisionTenant(org, { server });
        expect(report.outcome, report.error?.message).toBe('provisioned');
      }
    }
  });
  afterAll(async () => {
    await tk?.close();
    await dbs?.drop();
  });

  it('tenant:archive, tenant:restore and tenant:drop act on the tenant’s server; --dump dumps from it', async () => {
    const org = 'org_fl_b1';
    const schema = schemaNameFor(org);
    await query(urlOf('eu2'), `insert into "${schema}".items (name) values ('kept on eu2')`);
    // A decoy of the same name on main: nothing of the tenant's may touch it.
    await query(dbs.main, `create schema "${schema}"`);

    // Archive waits for the tenant's lock on eu2 (held here as a migration would hold it).
    const holder = new pg.Client({ connectionString: urlOf('eu2') });
    await holder.connect();
    try {
      await holder.query('select pg_advisory_lock($1, hashtext($2))', [LOCK_NAMESPACE, schema]);
      let settled = false;
      const archiving = tk.archiveTenant(org).finally(() => (settled = true));
      await new Promise((resolve) => setTimeout(resolve, 400));
      expect(settled).toBe(false);
      await holder.query('select pg_advisory_unlock($1, hashtext($2))', [LOCK_NAMESPACE, schema]);
      expect(await archiving).toMatchObject({ outcome: 'archived', previousStatus: 'ACTIVE', schema });
    } finally {
      await holder.end();
    }
    expect((await tk.archiveTenant(org)).outcome).toBe('already-archived');

    // Restore runs the unit on eu2: the migration the folder gained meanwhile is applied there.
    writeFileSync(path.join(tenantDir, '002_notes.js'), NOTES);
    const fresh = await open();
    try {
      const restored = await fresh.restoreTenant(org);
      expect(restored, restored.error?.message).toMatchObject({ outcome: 'restored', migrations: ['002_notes.js'] });
    } finally {
      await fresh.close();
    }
    expect(await tablesIn(urlOf('eu2'), schema)).toEqual(['items', 'notes']);
    const tracked = await query<{ name: string }>(
      urlOf('eu2'),
      `select name from "${schema}".knex_migrations_tenant order by id`,
    );
    expect(tracked.map((t) => t.name)).toEqual(['001_items.js', '002_notes.js']);
    const [row] = await query<{ status: string; ledger: number }>(
      dbs.main,
      `select status, (select count(*)::int from public.tenant_migration_runs where command = 'tenant:restore') as ledger
         from public.tenants where clerk_org_id = $1`,
      [org],
    );
    expect(row).toEqual({ status: 'ACTIVE', ledger: 1 });
    expect(await tablesIn(dbs.main, schema)).toEqual([]);

    // Drop with a dump, on the command line: pg_dump and DROP SCHEMA on eu2.
    expect((await tk.archiveTenant(org)).outcome).toBe('archived');
    const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'servers-fleet-dump-')), `${org}.sql`);
    const dropped = await runCli(['tenant:drop', org, '--dump', file, '--yes', '--json'], env);
    expect(dropped.code, dropped.stderr).toBe(0);
    expect(JSON.parse(dropped.stdout)).toMatchObject({ outcome: 'dropped', previousStatus: 'ARCHIVED' });
    const dump = readFileSync(file, 'utf8');
    expect(dump).toContain(`CREATE SCHEMA ${schema};`);
    expect(dump).toContain('kept on eu2');
    expect(dump).toContain(`CREATE TABLE ${schema}.notes`);
    expect(await schemaOn(urlOf('eu2'), schema)).toBe(false);
    expect(await schemaOn(dbs.main, schema)).toBe(true); // the decoy on main is untouched
    await query(dbs.main, `drop schema "${schema}"`);
    const [deleted] = await query<{ status: string; server: string }>(
      dbs.main,
      'select status, server from public.tenants where clerk_org_id = $1',
      [org],
    );
    expect(deleted).toEqual({ status: 'DELETED', server: 'eu2' });
    expect((await tk.dropTenant(org)).outcome).toBe('already-deleted');
  });

  it('a tenant on a server this configuration does not name: one clear error, nothing changed', async () => {
    const org = 'org_fl_elsewhere';
    await query(
      dbs.main,
      "insert into public.tenants (clerk_org_id, schema_name, status, server) values ($1, $2, 'ACTIVE', 'eu9')",
      [org, schemaNameFor(org)],
    );
    try {
      await expect(tk.archiveTenant(org)).rejects.toMatchObject({ code: 'E_UNKNOWN_SERVER' });
      const child = await runCli(['tenant:archive', org], env);
      expect(child.code).toBe(2);
      expect(child.stderr.trim().split('\n')).toHaveLength(1);
      expect(child.stderr).toContain(
        `${org} (${schemaNameFor(org)}) lives on server eu9, which is not configured here (known: main, eu1, eu2; see TENANT_SERVERS)`,
      );
      const [row] = await query<{ status: string }>(
        dbs.main,
        'select status from public.tenants where clerk_org_id = $1',
        [org],
      );
      expect(row!.status).toBe('ACTIVE');
    } finally {
      await query(dbs.main, 'delete from public.tenants where clerk_org_id = $1', [org]);
    }
  });

  it('migrate:tenants prints a line of totals per server', async () => {
    const run = await runCli(['migrate:tenants'], env);
    expect(run.code, run.stderr).toBe(0);
    const lines = run.stdout.trim().split('\n');
    const summary = lines.findIndex((l) => /^6 tenants: 5 migrated, 0 up to date, 0 failed, 1 skipped/.test(l));
    expect(summary, run.stdout).toBeGreaterThanOrEqual(0);
    expect(lines.slice(summary + 1, summary + 4)).toEqual([
      'main: 2 migrated',
      'eu1: 2 migrated',
      'eu2: 1 migrated, 1 skipped',
    ]);
  });

  it('tenants:run runs each tenant on its server’s pool; --json rows name the server; --server selects', async () => {
    const sql = path.join(tenantDir, '..', `fleet-run-${process.pid}.sql`);
    writeFileSync(
      sql,
      `insert into items (name) values ('ran here');
       select inet_server_port() as port, count(*)::int as items from items;`,
    );
    const all = await runCli(['tenants:run', sql, '--json'], env);
    expect(all.code, all.stderr).toBe(0);
    const report = JSON.parse(all.stdout);
    expect(report.totals).toMatchObject({ ran: 5, failed: 0, skipped: 1 });
    const ran = report.tenants.filter((t: { outcome: string }) => t.outcome === 'ran');
    for (const t of ran as { orgId: string; server: string; rows: { port: number }[] }[]) {
      expect(t.rows[0]!.port, t.orgId).toBe(PORTS[t.server]);
      const expected = Object.entries(ORGS).find(([, orgs]) => (orgs as readonly string[]).includes(t.orgId))![0];
      expect(t.server).toBe(expected);
    }
    // Written on the tenant's server, in its schema; its ledger row on main.
    const [count] = await query<{ n: number }>(
      urlOf('eu1'),
      `select count(*)::int as n from "${schemaNameFor('org_fl_a2')}".items where name = 'ran here'`,
    );
    expect(count!.n).toBe(1);
    const ledger = await query<{ schema_name: string }>(
      dbs.main,
      "select schema_name from public.tenant_migration_run_tenants where run_id = $1 and outcome = 'ran'",
      [report.runId],
    );
    expect(ledger).toHaveLength(5);

    const some = await runCli(['tenants:run', sql, '--server', 'eu1', '--server', 'main'], env);
    expect(some.code, some.stderr).toBe(0);
    expect(some.stdout).toMatch(/^4 tenants: 4 ran, 0 failed, 0 skipped/m);
    expect(some.stdout).toMatch(/^main: 2 ran$/m);
    expect(some.stdout).toMatch(/^eu1: 2 ran$/m);
    expect(some.stdout).not.toContain('org_fl_b2');
  });

  it('migrate:status and tenants:list read each tracking table on its server and show the server', async () => {
    // A remote tenant's tracking table changed by hand: read there, not trusted from the digest.
    const a1 = schemaNameFor('org_fl_a1');
    await query(urlOf('eu1'), `delete from "${a1}".knex_migrations_tenant where name = '002_notes.js'`);
    const status = await runCli(['migrate:status', '--json'], env);
    expect(status.code, status.stderr).toBe(0);
    const report = JSON.parse(status.stdout);
    const byOrg = new Map(report.tenants.map((t: { orgId: string }) => [t.orgId, t]));
    expect(byOrg.get('org_fl_a1')).toMatchObject({ server: 'eu1', state: 'behind', pending: ['002_notes.js'] });
    expect(byOrg.get('org_fl_a2')).toMatchObject({ server: 'eu1', state: 'up-to-date', applied: 2 });
    expect(byOrg.get('org_fl_m1')).toMatchObject({ server: 'main', state: 'up-to-date' });
    expect(byOrg.get('org_fl_b2')).toMatchObject({ server: 'eu2', state: 'up-to-date' });
    expect(report.unreachable).toBeUndefined();
    const text = await runCli(['migrate:status'], env);
    expect(text.stdout).toMatch(/ORG ID\s+SCHEMA\s+SERVER\s+STATUS/);
    expect(text.stdout).toMatch(new RegExp(`org_fl_a1\\s+${a1}\\s+eu1\\s+ACTIVE`));

    const only = await tk.status({ servers: ['eu2'] });
    expect(only.tenants.map((t) => t.orgId)).toEqual(['org_fl_b1', 'org_fl_b2']);

    const list = await runCli(['tenants:list', '--server', 'eu1', '--json'], env);
    expect(list.code, list.stderr).toBe(0);
    const listed = JSON.parse(list.stdout);
    expect(listed.filters.servers).toEqual(['eu1']);
    expect(
      listed.tenants.map((t: { orgId: string; server: string; version: string }) => [t.orgId, t.server, t.version]),
    ).toEqual([
      ['org_fl_a1', 'eu1', '001_items.js'],
      ['org_fl_a2', 'eu1', '002_notes.js'],
    ]);
    const listText = await runCli(['tenants:list'], env);
    expect(listText.stdout).toMatch(/ORG ID\s+SCHEMA\s+SERVER\s+STATUS\s+VERSION/);

    // Drift, each schema fingerprinted on its own server: a column added by hand on eu1.
    await query(urlOf('eu1'), `alter table "${schemaNameFor('org_fl_a2')}".items add column hotfix integer`);
    const drifted = await tk.status({ drift: true });
    const outliers = drifted.drift!.groups.flatMap((g) => g.outliers);
    expect(outliers.flatMap((o) => o.tenants.map((t) => t.orgId))).toEqual(['org_fl_a2']);
    expect(outliers[0]!.diff).toEqual([{ object: 'column items.hotfix', change: 'added', outlier: 'integer' }]);
    await query(urlOf('eu1'), `alter table "${schemaNameFor('org_fl_a2')}".items drop column hotfix`);
    await query(
      urlOf('eu1'),
      `insert into "${a1}".knex_migrations_tenant (name, batch, migration_time) values ('002_notes.js', 2, now())`,
    );
  });

  it('a server that does not answer: its tenants unreachable with one warning, the others reported', async () => {
    const org = 'org_fl_gone';
    const schema = schemaNameFor(org);
    await query(
      dbs.main,
      "insert into public.tenants (clerk_org_id, schema_name, status, server) values ($1, $2, 'ACTIVE', 'eu3')",
      [org, schema],
    );
    const downEnv = { ...env, TENANT_SERVERS: `${env.TENANT_SERVERS},eu3=${NOWHERE}` };
    const unreachable = /^server eu3 \(127\.0\.0\.1:5499\/nowhere\) is unreachable: /;
    try {
      const status = await runCli(['migrate:status', '--json'], downEnv);
      expect(status.code, status.stderr).toBe(0);
      const report = JSON.parse(status.stdout);
      expect(report.unreachable).toHaveLength(1);
      expect(report.unreachable[0].server).toBe('eu3');
      expect(report.unreachable[0].message).toMatch(unreachable);
      expect(report.unreachable[0].message.split('\n')).toHaveLength(1);
      const byOrg = new Map(report.tenants.map((t: { orgId: string }) => [t.orgId, t]));
      expect(byOrg.get(org)).toMatchObject({ server: 'eu3', state: 'unreachable', status: 'ACTIVE' });
      for (const other of ['org_fl_m1', 'org_fl_a1', 'org_fl_b2']) {
        expect(byOrg.get(other)).toMatchObject({ state: 'up-to-date' });
      }
      expect(report.summary).toMatchObject({ 'up-to-date': 5, 'not-active': 1, unreachable: 1, total: 7 });

      const text = await runCli(['migrate:status'], downEnv);
      expect(text.code, text.stderr).toBe(0);
      const warnings = text.stdout.split('\n').filter((l) => l.startsWith('warning: server eu3'));
      expect(warnings).toHaveLength(1);
      expect(text.stdout).toMatch(/^5 up to date, 0 behind, 0 failed, 1 unreachable, 1 not active$/m);

      const list = await runCli(['tenants:list'], downEnv);
      expect(list.code, list.stderr).toBe(0);
      expect(list.stdout).toMatch(new RegExp(`${org}\\s+${schema}\\s+eu3\\s+ACTIVE\\s+unreachable\\s+\\?`));
      expect(list.stdout.split('\n').filter((l) => l.startsWith('warning: server eu3'))).toHaveLength(1);

      const sql = path.join(tenantDir, '..', `fleet-count-${process.pid}.sql`);
      writeFileSync(sql, 'select count(*)::int as items from items;');
      const run = await runCli(['tenants:run', sql, '--json'], downEnv);
      expect(run.code).toBe(1);
      const ran = JSON.parse(run.stdout);
      expect(ran.totals).toMatchObject({ ran: 5, failed: 1 });
      const gone = ran.tenants.find((t: { orgId: string }) => t.orgId === org);
      expect(gone).toMatchObject({ outcome: 'failed', server: 'eu3' });
      expect(gone.error.message).toMatch(unreachable);
      expect(gone.error.message.split('\n')).toHaveLength(1);

      const drifted = await open({ TENANT_SERVERS: downEnv.TENANT_SERVERS });
      try {
        const withDrift = await drifted.status({ drift: true });
        expect(withDrift.drift!.drifted).toBe(0);
        expect(withDrift.unreachable!.map((u) => u.server)).toEqual(['eu3']);
      } finally {
        await drifted.close();
      }

      // The fleet report: each server's share, and the server of each tenant with an error.
      await query(dbs.main, "update public.tenants set last_migration_error = 'boom' where clerk_org_id = 'org_fl_b2'");
      const fleet = await collectFleetReport(tk.knex, await tk.tenantSource.load(), 'here');
      expect(fleet.servers).toEqual([
        { server: 'main', tenants: 2, active: 2, failing: 0 },
        { server: 'eu1', tenants: 2, active: 2, failing: 0 },
        { server: 'eu2', tenants: 2, active: 1, failing: 1 },
        { server: 'eu3', tenants: 1, active: 1, failing: 0 },
      ]);
      expect(fleet.errors[0]!.tenants).toEqual([
        { orgId: 'org_fl_b2', schema: schemaNameFor('org_fl_b2'), server: 'eu2' },
      ]);
      const html = renderFleetHtml(fleet);
      expect(html).toContain('Tenants by server');
      expect(html).toContain(`${schemaNameFor('org_fl_b2')} on eu2`);
    } finally {
      await query(dbs.main, 'delete from public.tenants where clerk_org_id = $1', [org]);
      await query(dbs.main, 'update public.tenants set last_migration_error = null');
    }
  });
});
