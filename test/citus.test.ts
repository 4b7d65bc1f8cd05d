import { cpSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/config.ts';
import { lintMigrations } from '../src/lint/lint.ts';
import { folderSource } from '../src/migrations/source.ts';
import { openToolkit, type Toolkit } from '../src/toolkit.ts';
import { type CitusDatabase, citusAnswers, createCitusDatabase } from './support/citus.ts';
import { runCli } from './support/cli.ts';
import { FIXTURES, ROOT } from './support/engine.ts';

/*
 * Citus schema-based sharding on a real three-node cluster (coordinator 127.0.0.1:5440, workers
 * :5441 and :5442; `/work/shared/citus/setup.sh`, which `.ci/run` runs). Each run gets a fresh
 * database on the cluster (support/citus.ts). Without a cluster the file skips outside CI and
 * fails in CI (`CI` set).
 */

const ADMIN_URL = process.env.CITUS_TEST_URL ?? 'postgres://postgres@127.0.0.1:5440/postgres';
const absent = await citusAnswers(ADMIN_URL);
const REQUIRED = Boolean(process.env.CI);
const TITLE =
  absent === undefined || REQUIRED
    ? 'Citus schema-based sharding'
    : `Citus schema-based sharding (skipped: no Citus cluster at ${ADMIN_URL}: run /work/shared/citus/setup.sh)`;

const MASTER = path.join(ROOT, 'master-migrations');
const TENANTS = ['org_c1', 'org_c2', 'org_c3', 'org_c4', 'org_c5', 'org_c6'];

/** A tenant folder of its own: the plain fixtures, then what a test adds. */
function tenantFolder(extra: Record<string, string> = {}): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'citus-tenant-'));
  cpSync(path.join(FIXTURES, 'tenant-plain'), dir, { recursive: true });
  for (const [name, text] of Object.entries(extra)) writeFileSync(path.join(dir, name), text);
  return dir;
}

const NOTES = `export async function up(knex) {
  await knex.schema.createTable('notes', (t) => {
    t.bigIncrements('id');
    t.integer('user_id').references('id').inTable('users');
    t.text('body');
  });
}
export async function down(knex) { await knex.schema.dropTable('notes'); }
`;
const NOTES_INDEX = `export const config = { transaction: false };
export async function up(knex) { await knex.raw('create index concurrently if not exists notes_body on notes (body)'); }
export async function down(knex) { await knex.raw('drop index concurrently if exists notes_body'); }
`;

describe.skipIf(absent !== undefined && !REQUIRED)(TITLE, () => {
  let cluster: CitusDatabase;
  let tk: Toolkit;
  let env: Record<string, string>;
  const open = (tenantDir: string, extra: Record<string, string> = {}): Promise<Toolkit> =>
    openToolkit(loadConfig({ ...env, TENANT_MIGRATIONS_DIR: tenantDir, ...extra }, ROOT));
  const query = async <T>(sql: string, values: unknown[] = []): Promise<T[]> =>
    (await tk.knex.raw(sql, values as never)).rows as T[];
  /** Each tenant schema's tables with the port of the node its shard sits on, from citus_shards. */
  const placements = async (): Promise<Map<string, Map<string, number>>> => {
    const rows = await query<{ schema: string; table: string; port: number }>(
      `select split_part(table_name::text, '.', 1) as schema, split_part(table_name::text, '.', 2) as table,
              nodeport as port
         from citus_shards where table_name::text like 'tid\\_%' order by 1, 2`,
    );
    const bySchema = new Map<string, Map<string, number>>();
    for (const r of rows) bySchema.set(r.schema, (bySchema.get(r.schema) ?? new Map()).set(r.table, Number(r.port)));
    return bySchema;
  };

  beforeAll(async () => {
    if (absent !== undefined) throw new Error(`CI needs the Citus cluster at ${ADMIN_URL}: ${absent}`);
    cluster = await createCitusDatabase(ADMIN_URL, 'toolkit');
    env = {
      DATABASE_URL: cluster.url,
      MASTER_MIGRATIONS_DIR: MASTER,
      TENANT_EXTENSIONS: '',
      CITUS: 'on',
    };
    tk = await open(tenantFolder());
    await tk.migrateMaster();
  });

  afterAll(async () => {
    await tk?.close();
    await cluster?.drop();
  });

  it('provisioning makes each tenant schema a distributed schema, whole on one worker, spread over both', async () => {
    expect(await tk.citus()).toBe(true);
    for (const orgId of TENANTS) expect((await tk.provisionTenant(orgId)).outcome).toBe('provisioned');
    const schemas = (await tk.listTenantsReport()).tenants.map((t) => t.schema);
    const distributed = await query<{ schema_name: string }>('select schema_name::text from citus_schemas');
    expect(distributed.map((r) => r.schema_name).sort()).toEqual([...schemas].sort());
    const shards = await placements();
    const workerPorts = cluster.workers.map((w) => Number(w.split(':')[1]));
    const used = new Set<number>();
    for (const schema of schemas) {
      const tables = shards.get(schema)!;
      expect([...tables.keys()]).toEqual([
        'knex_migrations_tenant',
        'knex_migrations_tenant_lock',
        'settings',
        'users',
      ]);
      const ports = new Set(tables.values());
      expect(ports.size).toBe(1); // the whole schema on one node
      const [port] = ports;
      expect(workerPorts).toContain(port);
      used.add(port!);
    }
    expect(used.size).toBe(2);
    // The tracking trigger is left out on Citus (it would run on the worker, away from the registry).
    const triggers = await query('select 1 from pg_trigger where tgname = ?', ['tenant_migrate_tracking_changed']);
    expect(triggers).toEqual([]);
  });

  it('a provisioning dry-run distributes nothing and leaves nothing behind', async () => {
    const report = await tk.provisionTenant('org_dry', { dryRun: true });
    expect(report.outcome).toBe('would-provision');
    expect(await query('select 1 from citus_schemas where schema_name::text = ?', [report.schema])).toEqual([]);
  });

  it('migrate:tenants and rollback:tenants go through the coordinator, a transaction: false step too', async () => {
    const next = await open(tenantFolder({ '003_notes.js': NOTES, '004_notes_index.js': NOTES_INDEX }));
    try {
      const up = await next.migrateTenants();
      expect(up.totals).toMatchObject({ migrated: TENANTS.length, failed: 0 });
      const shards = await placements();
      for (const tables of shards.values()) {
        expect(tables.has('notes')).toBe(true);
        expect(new Set(tables.values()).size).toBe(1); // the new table joined its schema's node
      }
      const [first] = (await next.listTenantsReport()).tenants;
      await next.knex.transaction(async (trx) => {
        await trx.raw("select set_config('search_path', ?, true)", [`${first!.schema}, public`]);
        await trx('users').insert({ email: 'a@example.com' });
        await trx('notes').insert({ user_id: 1, body: 'routed to the worker' });
      });
      const indexes = await query('select 1 from pg_indexes where indexname = ?', ['notes_body']);
      expect(indexes).toHaveLength(TENANTS.length);
      const down = await next.rollbackTenants();
      expect(down.totals).toMatchObject({ migrated: TENANTS.length, failed: 0 });
      for (const tables of (await placements()).values()) expect(tables.has('notes')).toBe(false);
    } finally {
      await next.close();
    }
  });

  it('migrate:status --json names each tenant node (CITUS=auto finds Citus on its own)', async () => {
    const { CITUS: _on, ...auto } = env;
    const result = await runCli(['migrate:status', '--json'], { ...auto, TENANT_MIGRATIONS_DIR: tenantFolder() });
    expect(result.stderr).toBe('');
    const tenants = JSON.parse(result.stdout).tenants as { schema: string; node: string }[];
    const shards = await placements();
    expect(tenants).toHaveLength(TENANTS.length);
    for (const t of tenants) {
      const [port] = new Set(shards.get(t.schema)!.values());
      expect(t.node).toBe(`127.0.0.1:${port}`);
    }
    const text = await runCli(['migrate:status'], { ...auto, TENANT_MIGRATIONS_DIR: tenantFolder() });
    expect(text.stdout).toMatch(/ORG ID +SCHEMA +NODE +STATUS/);
  });

  it('migrate:lint: a foreign key to a plain public table fails, one to a reference table passes', async () => {
    await tk.knex.raw('create table if not exists public.plans (id bigint primary key)');
    await tk.knex.raw("select create_reference_table('public.plans')");
    const dir = tenantFolder({
      '003_ref.js': `export async function up(knex) {
  await knex.schema.createTable('subscriptions', (t) => {
    t.bigIncrements('id');
    t.bigInteger('plan_id').references('id').inTable('plans');
    t.integer('user_id').references('id').inTable('users');
  });
}
export async function down(knex) { await knex.schema.dropTable('subscriptions'); }
`,
      '005_index.js': NOTES_INDEX.replaceAll('notes', 'subscriptions'),
      '004_bad.js': `export async function up(knex) {
  await knex.schema.createTable('picks', (t) => {
    t.bigIncrements('id');
    t.integer('area_id').references('id').inTable('focus_areas');
  });
}
export async function down(knex) { await knex.schema.dropTable('picks'); }
`,
    });
    const tenant = await folderSource(dir, 'TENANT_MIGRATIONS_DIR').load();
    const report = await lintMigrations(tk.knex, { tenant }, { citus: await tk.citus() });
    const found = report.findings.map(
      (f) => `${f.migration} ${f.rule} ${f.rule === 'citus-foreign-key' ? f.detail : ''}`,
    );
    expect(found).toEqual([
      '001_users.ts citus-int-serial ',
      '004_bad.js citus-foreign-key references public.focus_areas',
      '004_bad.js up-fails ',
      '005_index.js citus-index-concurrently ',
    ]);
    expect(report.findings[2]?.detail).toContain('must be a distributed table or a reference table');
    // Without Citus mode the same folder passes: the rules are Citus's only.
    expect((await lintMigrations(tk.knex, { tenant }, { citus: false })).ok).toBe(true);
  });

  it('the escape guard still refuses a tenant batch that writes into another tenant', async () => {
    const [a, b] = (await tk.listTenantsReport()).tenants;
    const escaping = `export async function up(knex) { await knex.raw('insert into ${b!.schema}.settings (key, value) values (?, ?)', ['x', '{}']); }
export async function down() {}
`;
    const next = await open(tenantFolder({ '003_escape.js': escaping }));
    try {
      const report = await next.migrateTenants({ orgIds: [a!.orgId] });
      expect(report.totals).toMatchObject({ failed: 1 });
      expect(report.tenants[0]?.error?.code).toBe('E_SCHEMA_ESCAPE');
      expect(await query(`select 1 from ${b!.schema}.settings`)).toEqual([]);
    } finally {
      await next.close();
    }
  });
});
