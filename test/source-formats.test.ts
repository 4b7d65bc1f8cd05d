import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withDedicatedConnection } from '../src/db/dedicated.ts';
import {
  createToolkit,
  folderSource,
  MigrationSourceError,
  openToolkit,
  schemaNameFor,
  TENANT_TRACKING_TABLE,
  type Toolkit,
  tenantSearchPath,
} from '../src/index.ts';
import { checksumOf } from '../src/migrations/source.ts';
import { folders, runCli } from './support/cli.ts';
import { FIXTURES, ROOT, startEngine, type TestEngine } from './support/engine.ts';

/*
 * Migration files as Knex users have them: CommonJS (also inside this "type": "module"
 * repository, which the fixture folders inherit), ES modules, TypeScript, and plain .sql files
 * with dbmate's markers, mixed in one folder. Loaded here in-process (vitest) and by the real
 * CLI (Node with tsx), which loads modules differently: both must agree.
 */

const CJS = path.join(FIXTURES, 'fmt-cjs');
const CJS_PACKAGE = path.join(FIXTURES, 'fmt-cjs-package');
const MIXED = path.join(FIXTURES, 'fmt-mixed');
const ESM_TS = path.join(FIXTURES, 'fmt-esm-ts');

const CJS_NAMES = ['001_cjs_users.js', '002_cjs_settings.js', '003_cjs_flag.cjs'];
const PACKAGE_NAMES = ['001_pkg_accounts.js', '002_pkg_notes.js'];
const MIXED_NAMES = ['001_mixed_users.ts', '002_mixed_audit.sql', '003_mixed_email_index.sql', '004_mixed_nickname.ts'];
const ESM_TS_NAMES = ['001_esm_a.mjs', '002_esm_b.js', '003_esm_c.mts', '004_esm_d.cts', '005_esm_e.ts'];

const tmp = mkdtempSync(path.join(os.tmpdir(), 'fmt-'));
let engine: TestEngine;
let base: Toolkit;

beforeAll(async () => {
  engine = await startEngine('source_formats');
  base = await openToolkit(engine.config({ TENANT_MIGRATIONS_DIR: MIXED, TENANT_EXTENSIONS: '' }));
  await base.migrateMaster();
});

afterAll(async () => {
  await base?.close();
  await engine?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

/** The toolkit over the shared pool with `dir` as its tenant folder (each test keeps to its own orgs). */
function toolkitFor(dir: string): Toolkit {
  return createToolkit({
    knex: base.knex,
    config: base.config,
    sources: { tenant: folderSource(dir, 'TENANT_MIGRATIONS_DIR') },
  });
}

/** A temporary folder with these files (and, if given, a package.json of that "type"). */
function folderOf(files: Record<string, string>, type?: 'module' | 'commonjs'): string {
  const dir = mkdtempSync(path.join(tmp, 'dir-'));
  if (type) writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ type }));
  for (const [name, content] of Object.entries(files)) writeFileSync(path.join(dir, name), content);
  return dir;
}

async function loadError(dir: string): Promise<MigrationSourceError> {
  const error = await folderSource(dir, 'TENANT_MIGRATIONS_DIR')
    .load()
    .then(
      () => undefined,
      (e: unknown) => e,
    );
  expect(error).toBeInstanceOf(MigrationSourceError);
  return error as MigrationSourceError;
}

/** The tracking rows' names, in the order they were applied. */
async function applied(knex: Knex, schema: string): Promise<string[]> {
  const rows = await knex.withSchema(schema).from(TENANT_TRACKING_TABLE).orderBy('id').select('name');
  return rows.map((r: { name: string }) => r.name);
}

async function relations(knex: Knex, schema: string): Promise<string[]> {
  const result = await knex.raw(
    `select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = ? and c.relkind in ('r', 'v', 'i') and c.relname not like 'knex\\_%' order by 1`,
    [schema],
  );
  return result.rows.map((r: { relname: string }) => r.relname);
}

async function functions(knex: Knex, schema: string): Promise<string[]> {
  const result = await knex.raw(
    'select p.proname from pg_proc p join pg_namespace s on s.oid = p.pronamespace where s.nspname = ? order by 1',
    [schema],
  );
  return result.rows.map((r: { proname: string }) => r.proname);
}

describe('loading: every kind of file Knex users have', () => {
  it('CommonJS: module.exports and exports.up in .js inside a "type": "module" package, and .cjs', async () => {
    const migrations = await folderSource(CJS).load();
    expect(migrations.map((m) => m.name)).toEqual(CJS_NAMES);
    expect(migrations.map((m) => m.transaction)).toEqual([true, true, false]); // exports.config is read
    for (const m of migrations) expect(typeof m.down).toBe('function');
  });

  it('CommonJS .js under "type": "commonjs"; ESM .mjs and .js; TypeScript .ts, .mts and .cts', async () => {
    expect((await folderSource(CJS_PACKAGE).load()).map((m) => m.name)).toEqual(PACKAGE_NAMES);
    // Vitest's module runner (vite) does not compile .cts: the CLI test below loads the whole
    // folder, .cts included, under tsx as users run it.
    const dir = folderOf({}, 'module');
    for (const name of ESM_TS_NAMES.filter((n) => !n.endsWith('.cts'))) {
      writeFileSync(path.join(dir, name), readFileSync(path.join(ESM_TS, name)));
    }
    const esm = await folderSource(dir).load();
    expect(esm.map((m) => m.name)).toEqual(ESM_TS_NAMES.filter((n) => !n.endsWith('.cts')));
    for (const m of esm) expect(m).toMatchObject({ transaction: true, down: expect.any(Function) });
  });

  it('.sql files mix with .ts files, ordered by name; transaction:false makes the migration non-transactional', async () => {
    const migrations = await folderSource(MIXED).load();
    expect(migrations.map((m) => m.name)).toEqual(MIXED_NAMES);
    expect(migrations.map((m) => m.transaction)).toEqual([true, true, false, true]);
    // Checksummed like every file: sha256 of the content with line endings normalised.
    expect(migrations[1]!.checksum).toBe(checksumOf(readFileSync(path.join(MIXED, '002_mixed_audit.sql'), 'utf8')));
  });

  it('refuses a .ts and a .sql file with the same name', async () => {
    const dir = folderOf({ '001_twice.ts': 'export async function up() {}\n', '001_twice.sql': 'select 1;\n' });
    expect((await loadError(dir)).message).toBe('Duplicate migration name 001_twice: 001_twice.sql and 001_twice.ts');
  });

  it.each([
    [
      'a CommonJS syntax error under "type": "module"',
      { '001_broken.js': 'exports.up = function (knex) {\n  return knex.raw("select 1"\n};\n' },
      'module',
      /^Cannot load migration 001_broken\.js: 001_broken\.js:2: SyntaxError: missing \) after argument list \(fix the file, or move it out of TENANT_MIGRATIONS_DIR if it is not a migration\)$/,
    ],
    [
      'a CommonJS file that exports nothing',
      { '001_nothing.js': 'const helper = 1;\nmodule.exports = { helper };\n' },
      'module',
      /^Migration 001_nothing\.js does not export an up\(knex\) function: export one \(`export async function up\(knex\)`, or `exports\.up = …` in CommonJS\), or move the file out of TENANT_MIGRATIONS_DIR if it is not a migration$/,
    ],
    [
      'a .sql file with an unknown marker option',
      { '001_typo.sql': '-- migrate:up transaction: false\ncreate index concurrently i on t (c);\n' },
      undefined,
      /^Cannot load migration 001_typo\.sql: line 1: unknown option "transaction:" on "-- migrate:up": the one option is "transaction:false"$/,
    ],
  ] as const)('%s: one line naming the file and what to do', async (_label, files, type, message) => {
    const error = await loadError(folderOf(files, type));
    expect(error.message).toMatch(message);
    expect(error.message).not.toContain('\n');
    expect(error.file).toBe(path.join(path.dirname(error.file!), Object.keys(files)[0]!));
  });
});

describe('tenants migrated and rolled back from these folders', () => {
  it('CommonJS .js files inside this "type": "module" repository: provision, roll back, migrate again', async () => {
    const tk = toolkitFor(CJS);
    const orgId = 'org_fmt_cjs';
    const schema = schemaNameFor(orgId);
    await tk.provisionTenant(orgId);
    expect(await applied(tk.knex, schema)).toEqual(CJS_NAMES);
    expect(await relations(tk.knex, schema)).toEqual(
      expect.arrayContaining(['cjs_settings', 'cjs_settings_flag_idx', 'cjs_users']),
    );
    // The wrapper's require and __filename worked: the default names the file.
    const column = await tk.knex.raw(
      `select column_default from information_schema.columns
        where table_schema = ? and table_name = 'cjs_settings' and column_name = 'source'`,
      [schema],
    );
    expect(column.rows[0].column_default).toMatch(/^'002_cjs_settings\.js'/);

    const back = await tk.rollbackTenants({ orgIds: [orgId], all: true });
    expect(back.tenants[0]).toMatchObject({ outcome: 'migrated', migrations: [...CJS_NAMES].reverse() });
    expect(await applied(tk.knex, schema)).toEqual([]);
    expect(await relations(tk.knex, schema)).toEqual([]);

    const again = await tk.migrateTenants({ orgIds: [orgId] });
    expect(again.tenants[0]).toMatchObject({ outcome: 'migrated', migrations: CJS_NAMES });
    expect(await applied(tk.knex, schema)).toEqual(CJS_NAMES);
  });

  it('.ts and .sql mixed, with down sections and a transaction:false CREATE INDEX CONCURRENTLY: migrate and roll back', async () => {
    const tk = toolkitFor(MIXED);
    const orgId = 'org_fmt_mixed';
    const schema = schemaNameFor(orgId);
    await tk.provisionTenant(orgId);
    expect(await applied(tk.knex, schema)).toEqual(MIXED_NAMES);
    expect(await relations(tk.knex, schema)).toEqual([
      'mixed_audit',
      'mixed_audit_pkey',
      'mixed_themed_users',
      'mixed_users',
      'mixed_users_email_idx',
      'mixed_users_pkey',
      'mixed_users_profile_idx',
    ]);
    expect(await functions(tk.knex, schema)).toEqual(['mixed_touch']);
    // `?` reached PostgreSQL as written: in a string literal, and as jsonb's operator in the view.
    const audit = await tk.knex.withSchema(schema).from('mixed_audit').first('note');
    expect(audit.note).toBe("why? because; that's why");
    await tk.knex
      .withSchema(schema)
      .into('mixed_users')
      .insert([
        { email: 'a@example.com', profile: { theme: 'dark' } },
        { email: 'b@example.com', profile: {} },
      ]);
    expect(await tk.knex.withSchema(schema).from('mixed_themed_users').count('* as n')).toEqual([{ n: '1' }]);
    // Built concurrently, outside a transaction, and valid.
    const valid = await tk.knex.raw(
      `select bool_and(i.indisvalid) as valid, count(*)::int as n from pg_index i
         join pg_class c on c.oid = i.indexrelid join pg_namespace s on s.oid = c.relnamespace
        where s.nspname = ? and c.relname in ('mixed_users_email_idx', 'mixed_users_profile_idx')`,
      [schema],
    );
    expect(valid.rows[0]).toEqual({ valid: true, n: 2 });

    const back = await tk.rollbackTenants({ orgIds: [orgId], lastBatch: true });
    expect(back.tenants[0]).toMatchObject({ outcome: 'migrated', migrations: [...MIXED_NAMES].reverse() });
    expect(await applied(tk.knex, schema)).toEqual([]);
    expect(await relations(tk.knex, schema)).toEqual([]);
    expect(await functions(tk.knex, schema)).toEqual([]);

    const again = await tk.migrateTenants({ orgIds: [orgId] });
    expect(again.tenants[0]).toMatchObject({ outcome: 'migrated', migrations: MIXED_NAMES });
  });

  it('a .sql file without markers is up only: rolling it back fails with a clear error and changes nothing', async () => {
    const dir = folderOf({
      '001_fmt_up_only.sql': 'create table fmt_up_only (id int);\ncreate table fmt_up_only_2 (id int);\n',
    });
    const tk = toolkitFor(dir);
    const orgId = 'org_fmt_up_only';
    const schema = schemaNameFor(orgId);
    await tk.provisionTenant(orgId);
    expect(await relations(tk.knex, schema)).toEqual(['fmt_up_only', 'fmt_up_only_2']);
    const back = await tk.rollbackTenants({ orgIds: [orgId], lastBatch: true });
    expect(back.tenants[0]).toMatchObject({ outcome: 'failed' });
    expect(back.tenants[0]!.error?.message).toMatch(/^001_fmt_up_only\.sql \(down\) failed: /);
    expect(await applied(tk.knex, schema)).toEqual(['001_fmt_up_only.sql']);
    expect(await relations(tk.knex, schema)).toEqual(['fmt_up_only', 'fmt_up_only_2']);
  });

  it('a failing statement of a .sql file names the file, its line and PostgreSQL’s message, and rolls back', async () => {
    const dir = folderOf({
      '001_fmt_failing.sql':
        '-- migrate:up\ncreate table fmt_failing (id int);\n\ninsert into fmt_nowhere values (1);\n',
    });
    const tk = toolkitFor(dir);
    const report = await tk.provisionTenant('org_fmt_failing');
    expect(report).toMatchObject({
      outcome: 'failed',
      migrations: [],
      error: {
        migration: '001_fmt_failing.sql',
        code: '42P01',
        message: '001_fmt_failing.sql (up) failed: line 4: relation "fmt_nowhere" does not exist',
      },
    });
    expect(await relations(tk.knex, schemaNameFor('org_fmt_failing'))).toEqual([]);
  });

  it('names are recorded as plain Knex records them: a tenant migrated by plain Knex is up to date for the toolkit', async () => {
    const tk = toolkitFor(CJS_PACKAGE);
    const [byToolkit, byKnex] = ['org_fmt_pkg_toolkit', 'org_fmt_pkg_knex'];
    await tk.provisionTenant(byToolkit);
    // Registered and empty: provisioned, then every migration rolled back.
    await tk.provisionTenant(byKnex);
    await tk.rollbackTenants({ orgIds: [byKnex], all: true });
    const schema = schemaNameFor(byKnex);
    expect(await applied(tk.knex, schema)).toEqual([]);

    // Plain Knex's migrator, as a deploy script runs it per tenant: the tenant's tracking table,
    // and its schema first on the search path (Knex's `searchPath` setting) for the
    // migrations' unqualified names. One connection, as the embedded engine has only one.
    await withDedicatedConnection(tk.knex, async (conn) => {
      await conn.raw("select set_config('search_path', ?, false)", [tenantSearchPath(schema)]);
      await conn.migrate.latest({
        directory: CJS_PACKAGE,
        schemaName: schema,
        tableName: TENANT_TRACKING_TABLE,
        loadExtensions: ['.js'],
      });
      await conn.raw('reset search_path');
    });
    expect(await applied(tk.knex, schema)).toEqual(PACKAGE_NAMES);
    expect(await applied(tk.knex, schemaNameFor(byToolkit))).toEqual(PACKAGE_NAMES);
    expect(await relations(tk.knex, schema)).toEqual(expect.arrayContaining(['pkg_accounts', 'pkg_notes']));

    const run = await tk.migrateTenants({ orgIds: [byKnex, byToolkit] });
    expect(run.tenants.map((t) => t.outcome)).toEqual(['up-to-date', 'up-to-date']);
    const verified = await tk.migrateTenants({ orgIds: [byKnex], verify: true });
    expect(verified.tenants[0]).toMatchObject({ outcome: 'up-to-date' });
    const status = await tk.status();
    const rows = status.tenants.filter((t) => t.orgId === byKnex || t.orgId === byToolkit);
    expect(rows.map((t) => [t.state, t.applied, t.pending])).toEqual([
      ['up-to-date', 2, []],
      ['up-to-date', 2, []],
    ]);
  });
});

describe('the CLI (Node and tsx, not vitest, load the files)', () => {
  let cliEngine: TestEngine;
  let env: Record<string, string>;
  const master = path.join(ROOT, 'master-migrations');

  beforeAll(async () => {
    // Its own database: on PGlite only one process may open a database at a time.
    cliEngine = await startEngine('source_formats_cli');
    env = { ...cliEngine.env, TENANT_EXTENSIONS: '' };
    const result = await runCli(['migrate:master'], { ...env, ...folders(master, MIXED) });
    expect(result.code, result.stderr).toBe(0);
  });

  afterAll(async () => {
    await cliEngine?.stop();
  });

  const cli = (args: string[], dir: string) => runCli(args, { ...env, ...folders(master, dir) });

  it.each([
    ['CommonJS in a "type": "module" package', CJS, 'org_fmt_cli_cjs', CJS_NAMES],
    ['ESM and TypeScript', ESM_TS, 'org_fmt_cli_esm', ESM_TS_NAMES],
    ['.ts and .sql mixed', MIXED, 'org_fmt_cli_mixed', MIXED_NAMES],
  ])('%s: provision:tenant applies the folder, rollback:tenants --all undoes it', async (_label, dir, orgId, names) => {
    // The reports say what ran; the database itself is checked in-process above (each opening
    // of the embedded engine costs seconds).
    const provisioned = await cli(['provision:tenant', orgId, '--json'], dir);
    expect(provisioned.code, provisioned.stderr).toBe(0);
    expect(JSON.parse(provisioned.stdout)).toMatchObject({ outcome: 'provisioned', migrations: names });
    const back = await cli(['rollback:tenants', '--tenant', orgId, '--all', '--yes', '--json'], dir);
    expect(back.code, back.stderr).toBe(0);
    expect(JSON.parse(back.stdout).tenants[0]).toMatchObject({ outcome: 'migrated', migrations: [...names].reverse() });
  });

  it('an unusable file is one error line naming the file, with no stack', async () => {
    const dir = folderOf(
      {
        ...Object.fromEntries(readdirSync(CJS).map((f) => [f, readFileSync(path.join(CJS, f), 'utf8')])),
        '004_cjs_broken.js': 'exports.up = ;\n',
      },
      'module',
    );
    const result = await cli(['migrate:tenants'], dir);
    expect(result.code).toBe(1);
    const errors = (result.stdout + result.stderr).split('\n').filter((l) => l.startsWith('error:'));
    expect(errors).toEqual([
      "error: Cannot load migration 004_cjs_broken.js: 004_cjs_broken.js:1: SyntaxError: Unexpected token ';' (fix the file, or move it out of TENANT_MIGRATIONS_DIR if it is not a migration)",
    ]);
    expect(result.stderr).not.toMatch(/^\s+at /m);
  });

  it('migrate:make:tenant --sql and migrate:make:master --sql write a SQL template the toolkit loads', async () => {
    for (const [kind, variable] of [
      ['tenant', 'TENANT_MIGRATIONS_DIR'],
      ['master', 'MASTER_MIGRATIONS_DIR'],
    ] as const) {
      const dir = path.join(tmp, `made-${kind}`);
      const result = await runCli([`migrate:make:${kind}`, '--sql', 'add_email_index'], { ...env, [variable]: dir });
      expect(result.code, result.stderr).toBe(0);
      const files = readdirSync(dir);
      expect(files).toEqual([expect.stringMatching(/^\d{14}_add_email_index\.sql$/)]);
      expect(result.stdout.trim().endsWith(path.join(`made-${kind}`, files[0]!))).toBe(true);
      const text = readFileSync(path.join(dir, files[0]!), 'utf8');
      expect(text).toMatch(/^-- migrate:up$/m);
      expect(text).toMatch(/^-- migrate:down$/m);
      const [migration] = await folderSource(dir).load();
      expect(migration).toMatchObject({ name: files[0], transaction: true, down: expect.any(Function) });
    }
  });
});
