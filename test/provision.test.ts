import { createHash } from 'node:crypto';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  candidateSchemaNames,
  createToolkit,
  OrphanSchemaError,
  openToolkit,
  type ProvisionReport,
  RegistryMissingError,
  schemaNameFor,
  type Toolkit,
  UsageError,
} from '../src/index.ts';
import { type CliResult, runCli } from './support/cli.ts';
import { FIXTURES, ROOT, startEngine, type TestEngine } from './support/engine.ts';

/*
 * The provisioner, in-process and through `provision:tenant`. On PGlite the CLI may only open
 * the folder while this process has it closed, so `cli()` closes the in-process pool first
 * and `db()` reopens it on demand.
 */

const MASTER = path.join(ROOT, 'master-migrations');
const SHIPPED = path.join(ROOT, 'tenant-migrations');
const PLAIN = path.join(FIXTURES, 'tenant-plain');
const FAILING = path.join(FIXTURES, 'prov-failing');
const PLAIN_NAMES = ['001_users.ts', '002_settings.ts'];
const BASE = { TENANT_MIGRATIONS_DIR: PLAIN, TENANT_EXTENSIONS: '' };

let engine: TestEngine;
let base: Toolkit | undefined;

beforeAll(async () => {
  engine = await startEngine('provision');
});

afterAll(async () => {
  await base?.close();
  await engine?.stop();
});

/** The in-process toolkit over the test database (reopened after a CLI run on PGlite). */
async function db(): Promise<Toolkit> {
  base ??= await openToolkit(engine.config(BASE));
  return base;
}

/** A toolkit over the same pool with other settings (tenant folder, extensions). */
async function toolkit(overrides: Record<string, string> = {}): Promise<Toolkit> {
  const shared = await db();
  return createToolkit({
    knex: shared.knex,
    config: engine.config({ ...BASE, ...overrides }),
    poolMax: shared.config.poolMax,
  });
}

/** Runs the CLI against the test database; on PGlite, closes this process's pool first. */
async function cli(args: readonly string[], overrides: Record<string, string> = {}): Promise<CliResult> {
  if (!engine.multiSession && base) {
    await base.close();
    base = undefined;
  }
  return runCli(args, { ...engine.env, MASTER_MIGRATIONS_DIR: MASTER, ...BASE, ...overrides });
}

async function rows<T>(sql: string, bindings: readonly unknown[] = []): Promise<T[]> {
  return (await (await db()).knex.raw(sql, bindings as never[])).rows as T[];
}

interface RegistryRow {
  clerk_org_id: string;
  schema_name: string;
  status: string;
  error: string | null;
  updated_at: Date;
}

async function registryRows(orgId: string): Promise<RegistryRow[]> {
  return rows(
    'select clerk_org_id, schema_name, status, error, updated_at from public.tenants where clerk_org_id = ?',
    [orgId],
  );
}

async function registryCount(): Promise<number> {
  return (await rows<{ n: number }>('select count(*)::int as n from public.tenants'))[0]!.n;
}

async function tenantSchemas(): Promise<string[]> {
  return (
    await rows<{ nspname: string }>("select nspname from pg_namespace where nspname like 'tid\\_%' order by 1")
  ).map((r) => r.nspname);
}

async function schemaExists(schema: string): Promise<boolean> {
  return (
    await rows<{ present: boolean }>('select exists (select 1 from pg_namespace where nspname = ?) as present', [
      schema,
    ])
  )[0]!.present;
}

async function tablesIn(schema: string): Promise<string[]> {
  return (
    await rows<{ t: string }>(
      'select table_name as t from information_schema.tables where table_schema = ? order by 1',
      [schema],
    )
  ).map((r) => r.t);
}

function md5(text: string): string {
  return createHash('md5').update(text, 'utf8').digest('hex');
}

const EMBEDDED_NOTICE = /^Using the embedded PostgreSQL \(PGlite with pgvector\); data in /;

/**
 * stderr is exactly one line, without a stack trace, besides the embedded engine's notice,
 * which appears exactly when the command opened the (embedded) database.
 */
function oneLine(result: CliResult, opened = true): string {
  const lines = result.stderr.trim().split('\n');
  if (engine.kind === 'embedded' && opened) expect(lines.shift(), result.stderr).toMatch(EMBEDDED_NOTICE);
  expect(lines, result.stderr).toHaveLength(1);
  expect(result.stderr).not.toMatch(/^\s+at /m);
  return lines[0]!;
}

describe('before the master migrations', () => {
  it('refuses to provision without the registry, naming `pnpm migrate:master`, and writes nothing', async () => {
    const viaCli = await cli(['provision:tenant', 'org_early']);
    expect(viaCli.code).toBe(1);
    expect(oneLine(viaCli)).toBe(
      'error: The tenant registry public.tenants does not exist: run `pnpm migrate:master` first',
    );
    expect(viaCli.stdout).toBe('');

    const tk = await toolkit();
    const error = await tk.provisionTenant('org_early').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(RegistryMissingError);
    expect((error as Error).message).toContain('pnpm migrate:master');
    expect(await tenantSchemas()).toEqual([]);
    expect(await rows("select to_regclass('public.tenants') as t")).toEqual([{ t: null }]);
  });
});

describe('provisioning', () => {
  beforeAll(async () => {
    const master = await (await db()).migrateMaster();
    expect(master.error).toBeNull();
  });

  it("derives the schema name as tid_ + the first 10 hex digits of md5(org id), as PostgreSQL's md5 does", async () => {
    expect(schemaNameFor('default_tenant')).toBe('tid_cf4116b064');
    const [row] = await rows<{ name: string }>("select 'tid_' || left(md5(?), 10) as name", ['default_tenant']);
    expect(row!.name).toBe('tid_cf4116b064');
    const candidates = candidateSchemaNames('default_tenant');
    expect(candidates[0]).toBe('tid_cf4116b064');
    expect(candidates[1]).toBe(`tid_${md5('default_tenant').slice(0, 12)}`);
  });

  it('a new tenant ends ACTIVE with its tables in its own schema and none in public', async () => {
    const tk = await toolkit();
    const report = await tk.provisionTenant('default_tenant');
    expect(report).toMatchObject({
      orgId: 'default_tenant',
      schema: 'tid_cf4116b064',
      outcome: 'provisioned',
      migrations: PLAIN_NAMES,
      error: null,
    });
    expect(await registryRows('default_tenant')).toEqual([
      expect.objectContaining({ schema_name: 'tid_cf4116b064', status: 'ACTIVE', error: null }),
    ]);
    expect(await tablesIn('tid_cf4116b064')).toEqual([
      'knex_migrations_tenant',
      'knex_migrations_tenant_lock',
      'settings',
      'users',
    ]);
    const publicTables = await tablesIn('public');
    expect(publicTables).not.toContain('users');
    expect(publicTables).not.toContain('settings');
    expect(publicTables).not.toContain('knex_migrations_tenant');
    // Knex's tracking format, one batch.
    const history = await rows<{ id: number; name: string; batch: number; migration_time: Date }>(
      'select id, name, batch, migration_time from tid_cf4116b064.knex_migrations_tenant order by id',
    );
    expect(history.map((r) => [r.name, r.batch])).toEqual([
      ['001_users.ts', 1],
      ['002_settings.ts', 1],
    ]);
    expect(history.every((r) => r.migration_time instanceof Date)).toBe(true);
  });

  it('a failing migration ends FAILED with the reason and leaves no schema and no half-made tables', async () => {
    const before = await tenantSchemas();
    const report = await (await toolkit({ TENANT_MIGRATIONS_DIR: FAILING })).provisionTenant('org_fails');
    expect(report.outcome).toBe('failed');
    expect(report.schema).toBe(schemaNameFor('org_fails'));
    expect(report.migrations).toEqual([]);
    expect(report.error?.message).toMatch(/002_prov_fail_boom\.ts \(up\) failed: boom: intentional failure/);
    const [row] = await registryRows('org_fails');
    expect(row).toMatchObject({ schema_name: schemaNameFor('org_fails'), status: 'FAILED' });
    expect(row!.error).toContain('boom: intentional failure');
    expect(await schemaExists(schemaNameFor('org_fails'))).toBe(false);
    expect(await tenantSchemas()).toEqual(before);
    expect(
      await rows("select table_schema, table_name from information_schema.tables where table_name like 'prov\\_fail%'"),
    ).toEqual([]);
  });

  it('the report of a failed provisioning names the migration that failed', async () => {
    const report = await (await toolkit({ TENANT_MIGRATIONS_DIR: FAILING })).provisionTenant('org_fails_named');
    expect(report.outcome).toBe('failed');
    expect(report.error).toEqual({
      migration: '002_prov_fail_boom.ts',
      message: expect.stringContaining('boom'),
      code: 'E_MIGRATION',
    });
  });

  it('through the CLI: a failure exits 1; after fixing TENANT_MIGRATIONS_DIR it ends ACTIVE (--json report); then it is a no-op with exit 0', async () => {
    const schema = schemaNameFor('org_cli_fix');
    const failed = await cli(['provision:tenant', 'org_cli_fix'], { TENANT_MIGRATIONS_DIR: FAILING });
    expect(failed.code).toBe(1);
    expect(failed.stdout).toMatch(
      new RegExp(
        `^Provisioning org_cli_fix → ${schema} FAILED: 002_prov_fail_boom\\.ts \\(up\\) failed: boom: intentional failure`,
      ),
    );
    expect(await registryRows('org_cli_fix')).toEqual([expect.objectContaining({ status: 'FAILED' })]);
    expect(await schemaExists(schema)).toBe(false);

    // --json: stdout is exactly the report.
    const fixed = await cli(['provision:tenant', 'org_cli_fix', '--json'], { TENANT_MIGRATIONS_DIR: PLAIN });
    expect(fixed.code, fixed.stderr).toBe(0);
    const doc = JSON.parse(fixed.stdout) as Record<string, unknown>;
    expect(Object.keys(doc).sort()).toEqual([
      'command',
      'durationMs',
      'error',
      'migrations',
      'orgId',
      'outcome',
      'schema',
    ]);
    expect(doc).toMatchObject({
      command: 'provision:tenant',
      orgId: 'org_cli_fix',
      schema,
      outcome: 'provisioned',
      migrations: PLAIN_NAMES,
      error: null,
    });
    expect(typeof doc.durationMs).toBe('number');
    const [row] = await registryRows('org_cli_fix');
    expect(row).toMatchObject({ schema_name: schema, status: 'ACTIVE', error: null });
    expect(await tablesIn(schema)).toEqual([
      'knex_migrations_tenant',
      'knex_migrations_tenant_lock',
      'settings',
      'users',
    ]);

    const again = await cli(['provision:tenant', 'org_cli_fix'], { TENANT_MIGRATIONS_DIR: PLAIN });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toBe(`org_cli_fix is already ACTIVE → ${schema} (nothing to do)\n`);
    // A no-op: the row was not even touched.
    expect(await registryRows('org_cli_fix')).toEqual([row]);
  });

  it('an ACTIVE tenant is a no-op in-process too: outcome already-active, nothing applied', async () => {
    const report = await (await toolkit()).provisionTenant('default_tenant');
    expect(report).toMatchObject({ schema: 'tid_cf4116b064', outcome: 'already-active', migrations: [], error: null });
    expect(await rows('select count(*)::int as n from tid_cf4116b064.knex_migrations_tenant')).toEqual([{ n: 2 }]);
  });

  it('concurrent provisioning of one org id: one schema, one registry row, the same schema name for all', async () => {
    const tk = await toolkit();
    // Eight at once really run side by side on a server: the pool has room for all of them.
    expect(tk.config.poolMax).toBe(engine.multiSession ? 10 : 1);
    const orgId = 'org_race_same';
    // On a server these run on as many pooled connections at once; on PGlite the one connection serialises them.
    const reports = await Promise.all(Array.from({ length: 8 }, () => tk.provisionTenant(orgId)));
    const schema = schemaNameFor(orgId);
    expect(reports.map((r) => r.schema)).toEqual(Array(8).fill(schema));
    expect(reports.map((r) => r.error)).toEqual(Array(8).fill(null));
    expect(reports.filter((r) => r.outcome === 'provisioned')).toHaveLength(1);
    expect(reports.filter((r) => r.outcome === 'already-active')).toHaveLength(7);
    expect(await registryRows(orgId)).toEqual([expect.objectContaining({ schema_name: schema, status: 'ACTIVE' })]);
    expect((await tenantSchemas()).filter((s) => s.startsWith(schema))).toEqual([schema]);
    expect(await rows(`select name from ${schema}.knex_migrations_tenant order by id`)).toEqual(
      PLAIN_NAMES.map((name) => ({ name })),
    );
  });

  it('concurrent provisioning of different orgs that all need an extension not yet installed: all succeed, every round', async () => {
    // An extension this server has but this database has not installed: citext on a server
    // (which may lack vector), vector on PGlite (which has no contrib extensions loaded).
    const available = await rows<{ name: string }>(
      "select name from pg_available_extensions where name in ('citext', 'hstore') order by name",
    );
    const extension = engine.kind === 'embedded' || available.length === 0 ? 'vector' : available[0]!.name;
    const tk = await toolkit({ TENANT_EXTENSIONS: extension });
    for (let round = 0; round < 3; round++) {
      expect(await rows('select extname from pg_extension where extname = ?', [extension])).toEqual([]);
      const orgIds = Array.from({ length: 8 }, (_, i) => `org_ext_r${round}_${i}`);
      const reports: ProvisionReport[] = await Promise.all(orgIds.map((orgId) => tk.provisionTenant(orgId)));
      expect(reports.map((r) => [r.orgId, r.outcome, r.error?.message ?? null])).toEqual(
        orgIds.map((orgId) => [orgId, 'provisioned', null]),
      );
      expect(await rows('select extname from pg_extension where extname = ?', [extension])).toEqual([
        { extname: extension },
      ]);
      const statuses = await rows<{ status: string }>(
        'select status from public.tenants where clerk_org_id = any(?::text[])',
        [orgIds],
      );
      expect(statuses).toEqual(Array(8).fill({ status: 'ACTIVE' }));
      // Nothing of ours depends on it, so the next round races its creation again.
      await (await db()).knex.raw('drop extension ??', [extension]);
    }
  });

  it('a name collision gives the org a longer deterministic name (tid_ + 12 hex of the same md5), recorded in the registry', async () => {
    const orgId = 'org_collide_x';
    const short = schemaNameFor(orgId);
    const long = `tid_${md5(orgId).slice(0, 12)}`;
    expect(long.startsWith(short)).toBe(true);
    await (await db())
      .knex('tenants')
      .insert({ clerk_org_id: 'org_holder_of_the_name', schema_name: short, status: 'ACTIVE' });

    const report = await (await toolkit()).provisionTenant(orgId);
    expect(report).toMatchObject({ schema: long, outcome: 'provisioned', error: null });
    expect(await registryRows(orgId)).toEqual([expect.objectContaining({ schema_name: long, status: 'ACTIVE' })]);
    expect(await tablesIn(long)).toEqual([
      'knex_migrations_tenant',
      'knex_migrations_tenant_lock',
      'settings',
      'users',
    ]);
    expect(await schemaExists(short)).toBe(false);
    // The registry, not the hash, is the truth from now on.
    const again = await (await toolkit()).provisionTenant(orgId);
    expect(again).toMatchObject({ schema: long, outcome: 'already-active' });
  });

  const BAD_ORG_IDS: readonly (readonly [string, string])[] = [
    ['empty', ''],
    ['whitespace', '   '],
    ['65 characters', 'o'.repeat(65)],
    ['SQL', 'a;drop table x'],
    ['unicode', 'org_é'],
    ['a path', '../x'],
    ['a single quote', "org_'x"],
    ['a double quote', 'org_"x'],
  ];

  it('refuses every kind of bad org id with a UsageError and writes nothing', async () => {
    const tk = await toolkit();
    const countBefore = await registryCount();
    const schemasBefore = await tenantSchemas();
    for (const [kind, orgId] of BAD_ORG_IDS) {
      const error = await tk.provisionTenant(orgId).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error, kind).toBeInstanceOf(UsageError);
      expect((error as UsageError).exitCode, kind).toBe(2);
      expect((error as UsageError).message, kind).toMatch(/^Invalid org id/);
    }
    expect(await registryCount()).toBe(countBefore);
    expect(await tenantSchemas()).toEqual(schemasBefore);
    // The longest allowed id works.
    expect((await tk.provisionTenant('o'.repeat(64))).outcome).toBe('provisioned');
  });

  it('the CLI exits 2 on a bad org id before connecting, and writes nothing', async () => {
    const countBefore = await registryCount();
    const schemasBefore = await tenantSchemas();
    // These never open the database, so on PGlite this process may keep it open meanwhile.
    // One of each family (the in-process test above covers every kind): a process costs a second of CPU.
    const env = { ...engine.env, MASTER_MIGRATIONS_DIR: MASTER, ...BASE };
    const picked = BAD_ORG_IDS.filter(([kind]) => ['empty', '65 characters', 'SQL', 'a single quote'].includes(kind));
    const results = await Promise.all(picked.map(([, orgId]) => runCli(['provision:tenant', orgId], env)));
    results.forEach((result, i) => {
      const [kind] = picked[i]!;
      expect(result.code, `${kind}: ${result.stderr}`).toBe(2);
      expect(oneLine(result, false), kind).toMatch(/^error: Invalid org id/);
      expect(result.stdout, kind).toBe('');
    });
    expect(await registryCount()).toBe(countBefore);
    expect(await tenantSchemas()).toEqual(schemasBefore);
  });

  it('refuses to adopt an existing schema that no registry row claims (OrphanSchemaError), in-process and through the CLI', async () => {
    const orgId = 'org_orphan';
    const schema = schemaNameFor(orgId);
    const knex = (await db()).knex;
    await knex.raw('create schema ??', [schema]);
    await knex.raw('create table ??.?? (secret text)', [schema, 'someone_elses_data']);
    await knex.raw('insert into ??.?? values (?)', [schema, 'someone_elses_data', 'keep me']);

    const error = await (await toolkit()).provisionTenant(orgId).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OrphanSchemaError);
    expect((error as Error).message).toContain(schema);
    expect((error as Error).message).toMatch(/refusing to adopt/);

    const viaCli = await cli(['provision:tenant', orgId]);
    expect(viaCli.code).toBe(1);
    expect(oneLine(viaCli)).toMatch(
      new RegExp(`^error: Schema ${schema} already exists but is not registered to ${orgId}; refusing to adopt it`),
    );

    expect(await registryRows(orgId)).toEqual([]);
    expect(await tablesIn(schema)).toEqual(['someone_elses_data']);
    expect(await rows(`select secret from ${schema}.someone_elses_data`)).toEqual([{ secret: 'keep me' }]);
  });

  it('provision:tenant --json on a failure: exit 1, the report with the reason on stdout', async () => {
    const bad = await cli(['provision:tenant', 'org_json_fail', '--json'], { TENANT_MIGRATIONS_DIR: FAILING });
    expect(bad.code).toBe(1);
    const failed = JSON.parse(bad.stdout) as Record<string, unknown>;
    expect(failed).toMatchObject({
      command: 'provision:tenant',
      orgId: 'org_json_fail',
      schema: schemaNameFor('org_json_fail'),
      outcome: 'failed',
      migrations: [],
    });
    expect(failed.error).toMatchObject({
      message: expect.stringContaining('boom: intentional failure'),
      code: 'E_MIGRATION',
    });
    expect(await registryRows('org_json_fail')).toEqual([expect.objectContaining({ status: 'FAILED' })]);
  });

  it('the shipped tenant migrations: vector(1536) with an HNSW index where pgvector exists, a FAILED tenant saying what to do where it does not', async () => {
    const orgId = 'org_shipped';
    const schema = schemaNameFor(orgId);
    const tk = await toolkit({ TENANT_MIGRATIONS_DIR: SHIPPED, TENANT_EXTENSIONS: 'vector' });
    const report = await tk.provisionTenant(orgId);
    if (engine.hasVector) {
      expect(report).toMatchObject({ outcome: 'provisioned', error: null });
      expect(report.migrations).toHaveLength(3);
      expect(await registryRows(orgId)).toEqual([expect.objectContaining({ status: 'ACTIVE' })]);
      const [column] = await rows<{ type: string }>(
        `select format_type(a.atttypid, a.atttypmod) as type from pg_attribute a
          where a.attrelid = to_regclass(format('%I.chat_messages', ?::text)) and a.attname = 'embedding'`,
        [schema],
      );
      expect(column?.type).toBe('vector(1536)');
      const indexes = await rows<{ indexname: string; indexdef: string }>(
        'select indexname, indexdef from pg_indexes where schemaname = ? and tablename = ?',
        [schema, 'chat_messages'],
      );
      const hnsw = indexes.find((i) => i.indexname === 'chat_messages_embedding_hnsw');
      expect(hnsw?.indexdef).toMatch(/USING hnsw \(embedding vector_cosine_ops\)/);
      expect(await tablesIn('public')).not.toContain('chat_messages');
    } else {
      expect(report.outcome).toBe('failed');
      expect(report.error?.message).toMatch(/no "vector" extension: install pgvector/);
      expect(report.error?.message).toMatch(/TENANT_EXTENSIONS/);
      const [row] = await registryRows(orgId);
      expect(row).toMatchObject({ status: 'FAILED', error: report.error?.message });
      expect(await schemaExists(schema)).toBe(false);
    }
  });
});
