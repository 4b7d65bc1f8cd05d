/**
 * Broken migration folders: a file without `up`, a syntax error, a migration that throws, two
 * files with one name, an applied migration deleted from disk, an applied file edited. Promise
 * under test: a clear message naming the file, a non-zero exit, and no tenant changed (tracking
 * rows and tables exactly as before). Broken files are written to temporary copies of the
 * fixtures at run time (see folderWith), so that the repository itself still typechecks.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { folderSource, MigrationSourceError, runSchema, type Toolkit, tenantTarget } from '../../src/index.ts';
import {
  BASE_DIR,
  cliEnv,
  folderWith,
  hasStack,
  NEXT_DIR,
  orgIds,
  registryRows,
  type SchemaSnapshot,
  setUpTenants,
  snapshot,
  withTk,
} from '../fixtures/rel-support/support.ts';
import { runCli } from '../support/cli.ts';
import { startEngine, type TestEngine } from '../support/engine.ts';

const ORGS = orgIds('org_badmig', 3);
let engine: TestEngine;

beforeAll(async () => {
  engine = await startEngine('rel_bad_migrations');
  await setUpTenants(engine, BASE_DIR, ORGS);
});

afterAll(async () => {
  await engine?.stop();
});

/** What every tenant schema holds, plus whatever `inspect` reads, in one opening of the database. */
async function schemas<T = undefined>(
  inspect?: (tk: Toolkit) => Promise<T>,
): Promise<{ schemas: SchemaSnapshot[]; extra: T | undefined }> {
  return withTk(engine, BASE_DIR, async (tk) => ({
    schemas: [...(await snapshot(tk.knex)).values()],
    extra: await inspect?.(tk),
  }));
}

/** The tenants' schemas as the last test that meant to change them left them. */
let expected: SchemaSnapshot[];

/** Runs the CLI with `dir` as the tenant folder and checks that no tenant changed. */
async function runUnchanged(args: string[], dir: string): Promise<{ code: number | null; out: string }> {
  const result = await runCli(args, cliEnv(engine, dir));
  expect(hasStack(result.stdout + result.stderr)).toBe(false);
  expect(result.stderr).not.toMatch(/unexpected error/);
  expect((await schemas()).schemas).toEqual(expected);
  return { code: result.code, out: result.stdout + result.stderr };
}

const UP = 'export async function up(): Promise<void> {}\n';
const SYNTAX_ERROR = 'export async function up(knex) {\n  await knex.raw("select 1"\n}\n';

describe('a migration folder that cannot be loaded is refused before any tenant is touched', () => {
  beforeAll(async () => {
    expected = (await schemas()).schemas;
  });

  let syntaxOutput: string | undefined; // the CLI's output for the syntax error, checked twice
  it.each([
    [
      'a file that does not export up',
      { '002_no_up.ts': 'export async function down(): Promise<void> {}\n' },
      /error: Migration 002_no_up\.ts does not export an up\(knex\) function/,
    ],
    ['a syntax error', { '002_syntax.ts': SYNTAX_ERROR }, /error: Cannot load migration 002_syntax\.ts: /],
    [
      'a duplicate name (x.ts and x.js)',
      { '002_twice.ts': UP, '002_twice.js': 'export async function up() {}\n' },
      /error: Duplicate migration name 002_twice: 002_twice\.js and 002_twice\.ts/,
    ],
  ])('%s: one line naming the file, exit 1', async (label, files, message) => {
    const dir = folderWith(BASE_DIR, files);
    const migrate = await runUnchanged(['migrate:tenants'], dir);
    if (label === 'a syntax error') syntaxOutput = migrate.out;
    expect(migrate.code).toBe(1);
    expect(migrate.out).toMatch(message);
    expect(migrate.out.split('\n').filter((l) => l.startsWith('error:'))).toHaveLength(1);
  });

  it('a syntax error: the one line also says where in the file, and what is wrong', async () => {
    syntaxOutput ??= (await runUnchanged(['migrate:tenants'], folderWith(BASE_DIR, { '002_syntax.ts': SYNTAX_ERROR })))
      .out;
    const [line] = syntaxOutput.split('\n').filter((l) => l.startsWith('error:'));
    expect(line).toMatch(/002_syntax\.ts:3:\d+: .*Expected/);
  });

  it('provision:tenant refuses such a folder before registering the org', async () => {
    const dir = folderWith(BASE_DIR, { '002_no_up.ts': 'export const down = 1;\n' });
    const result = await runUnchanged(['provision:tenant', 'org_badmig_new'], dir);
    expect(result.code).toBe(1);
    expect(result.out).toMatch(/error: Migration 002_no_up\.ts does not export an up\(knex\) function/);
    expect((await schemas((tk) => registryRows(tk.knex))).extra!.map((r) => r.orgId)).toEqual(ORGS);
  });

  it('library callers get a MigrationSourceError carrying the file', async () => {
    const dir = folderWith(BASE_DIR, { '002_no_up.ts': 'export const up = 42;\n' });
    const error = await folderSource(dir)
      .load()
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(error).toBeInstanceOf(MigrationSourceError);
    expect(error).toMatchObject({ code: 'E_MIGRATION_SOURCE', file: path.join(dir, '002_no_up.ts') });
  });
});

describe('a migration that throws', () => {
  it('fails every tenant it reaches, naming the file, and rolls back the whole batch', async () => {
    const dir = folderWith(BASE_DIR, {
      '002_labels.ts':
        "import type { Knex } from 'knex';\nexport async function up(knex: Knex): Promise<void> {\n  await knex.schema.createTable('labels', (t) => t.increments());\n}\n",
      '003_boom.ts':
        "export async function up(): Promise<void> {\n  throw new Error('boom: this migration refuses');\n}\n",
    });
    const result = await runCli(['migrate:tenants'], cliEnv(engine, dir));
    expect(hasStack(result.stdout + result.stderr)).toBe(false);
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/3 tenants: 0 migrated, 0 up to date, 3 failed, 0 skipped/);
    for (const orgId of ORGS)
      expect(result.stdout).toMatch(
        new RegExp(`  ${orgId} \\(tid_[0-9a-f]+\\): 003_boom\\.ts \\(up\\) failed: boom: this migration refuses`),
      );
    const after = await schemas(async (tk) => (await tk.status()).tenants.map((t) => [t.state, t.error]));
    expect(after.schemas).toEqual(expected);
    expect(after.extra).toEqual(ORGS.map(() => ['failed', '003_boom.ts (up) failed: boom: this migration refuses']));
  });
});

describe('the history and the files disagree', () => {
  // From here on the tenants are at the new version, and its checksums are recorded.
  beforeAll(async () => {
    await withTk(engine, NEXT_DIR, async (tk) => {
      expect((await tk.migrateTenants()).totals).toMatchObject({ migrated: 3, failed: 0 });
    });
    expected = (await schemas()).schemas;
  });

  it('an applied migration deleted from disk: every tenant refused, naming the missing files', async () => {
    const result = await runUnchanged(['migrate:tenants'], BASE_DIR);
    expect(result.code).toBe(1);
    expect(result.out).toMatch(/3 tenants: 0 migrated, 0 up to date, 3 failed, 0 skipped/);
    expect(result.out.match(/applied migrations are missing: 002_notes\.ts, 003_tags\.ts/g)).toHaveLength(6); // progress line and summary, per tenant
    await withTk(engine, BASE_DIR, async (tk) => {
      const rollback = await tk.rollbackTenants();
      expect(rollback.totals).toMatchObject({ failed: 3 });
      expect(rollback.tenants.map((t) => t.error?.message)).toEqual(
        ORGS.map(() => expect.stringMatching(/applied migrations are missing: .*002_notes\.ts/)),
      );
      expect((await tk.status()).tenants.map((t) => t.missing)).toEqual(
        ORGS.map(() => ['002_notes.ts', '003_tags.ts']),
      );
    });
    expect((await schemas()).schemas).toEqual(expected);
  });

  it('a file edited after it was applied: refused by migrate and provision, naming the file', async () => {
    const original = readFileSync(path.join(NEXT_DIR, '002_notes.ts'), 'utf8');
    const dir = folderWith(NEXT_DIR, { '002_notes.ts': `${original}\n// an edit after the fact\n` });
    const message = /error: Migration 002_notes\.ts was edited after it was applied \(checksum differs\)/;
    const migrate = await runUnchanged(['migrate:tenants'], dir);
    expect(migrate.code).toBe(1);
    expect(migrate.out).toMatch(message);
    // provisionTenant (the library call behind provision:tenant) refuses before registering anything.
    await withTk(engine, dir, async (tk) => {
      await expect(tk.provisionTenant('org_badmig_late')).rejects.toThrow(
        /^Migration 002_notes\.ts was edited after it was applied/,
      );
      expect((await registryRows(tk.knex)).map((r) => r.orgId)).toEqual(ORGS);
    });
  });

  it('a file applied by a run that died before recording its checksum is still refused once edited', async () => {
    // A killed `migrate:tenants` leaves exactly this: the tenants' tracking rows committed, the
    // checksum (written after the fan-out) never. runSchema writes the former without the latter.
    const late =
      "import type { Knex } from 'knex';\nexport async function up(knex: Knex): Promise<void> {\n  await knex.schema.createTable('late', (t) => t.increments());\n}\n";
    const dir = folderWith(NEXT_DIR, { '004_late.ts': late });
    await withTk(engine, dir, async (tk) => {
      const migrations = await folderSource(dir).load();
      for (const row of await registryRows(tk.knex)) {
        expect(
          (await runSchema(tk.knex, tenantTarget(row.schema), migrations, { lockTimeoutMs: 5000 }, 'up')).migrations,
        ).toEqual(['004_late.ts']);
      }
      // The operator reruns after the crash: nothing left to apply.
      expect((await tk.migrateTenants()).totals).toMatchObject({ 'up-to-date': 3, failed: 0 });
      expected = [...(await snapshot(tk.knex)).values()];
    });
    const edited = folderWith(dir, { '004_late.ts': late.replace("'late'", "'late_v2'") });
    const result = await runUnchanged(['migrate:tenants'], edited);
    expect(result.out).toMatch(/error: Migration 004_late\.ts was edited after it was applied/);
    expect(result.code).toBe(1);
  });
});
