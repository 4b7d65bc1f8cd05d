import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Database, folderSource, type Migration, openToolkit, withDatabase } from '../src/index.ts';
import { type LintInput, type LintReport, lintMigrations } from '../src/lint/lint.ts';
import { folders, runCli } from './support/cli.ts';
import { FIXTURES, ROOT, startEngine, type TestEngine } from './support/engine.ts';

/*
 * `migrate:lint` on real PostgreSQL: the migrations run in one transaction that is rolled back,
 * their SQL is captured from Knex's query events and checked with the PostgreSQL parser, and each
 * tenant migration's down is checked by up → down → up in a scratch schema. On PGlite only one
 * process may open the folder, so the database is opened in-process only between CLI runs.
 */

const BAD = path.join(FIXTURES, 'lint-bad');
const GOOD = path.join(FIXTURES, 'lint-good');
const DISABLED = path.join(FIXTURES, 'lint-disabled');
const WARN = path.join(FIXTURES, 'lint-warn');
const MASTER = path.join(FIXTURES, 'lint-master');

let engine: TestEngine;

beforeAll(async () => {
  engine = await startEngine('lint');
});

afterAll(async () => {
  await engine?.stop();
});

function inspect<T>(cb: (db: Database) => Promise<T>): Promise<T> {
  return withDatabase(engine.config({ TENANT_EXTENSIONS: '' }), cb);
}

async function lintFolders(tenantDir: string, masterDir?: string): Promise<LintReport> {
  const input: LintInput = {
    tenant: await folderSource(tenantDir).load(),
    ...(masterDir ? { master: await folderSource(masterDir).load() } : {}),
  };
  return inspect((db) => lintMigrations(db.knex, input));
}

/** `migration rule phase` per finding, in report order. */
function flagged(report: LintReport): string[] {
  return report.findings.map((f) => `${f.migration} ${f.rule} ${f.phase ?? '-'}`);
}

/** Everything outside the system schemas that a lint could leave behind: schemas, relations, extensions. */
async function catalog(db: Database): Promise<string[]> {
  const result = await db.knex.raw(
    `select 'schema ' || nspname as item from pg_namespace
      union all
     select 'relation ' || n.nspname || '.' || c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')
      union all
     select 'extension ' || extname from pg_extension
      order by 1`,
  );
  return result.rows.map((r: { item: string }) => r.item);
}

function inline(name: string, up: Migration['up'], more: Partial<Migration> = {}): Migration {
  return {
    name,
    file: `inline:${name}`,
    checksum: '0'.repeat(64),
    transaction: true,
    up,
    down: async () => {},
    ...more,
  };
}

describe('lintMigrations', () => {
  it('each rule flags its bad file, up and down', async () => {
    const report = await lintFolders(BAD);
    expect(flagged(report)).toEqual([
      '002_public_audit.ts schema-qualified up',
      '002_public_audit.ts schema-qualified down',
      '003_search_path.ts search-path up',
      '004_extension.ts create-extension up',
      '005_handle_index.ts index-not-concurrent up',
      '006_member_email.ts not-null-without-default up',
      '007_member_nickname.ts down-reverts-up down',
      '008_tags.ts down-reverts-up -',
    ]);
    expect(report.totals).toMatchObject({ files: 8, checked: 8, notChecked: 0, errors: 7, warnings: 1 });
    expect(report.ok).toBe(false);
    const audit = report.findings[0]!;
    expect(audit).toMatchObject({ severity: 'error', detail: 'public.lint_audit' });
    expect(audit.statement).toBe('create table "public"."lint_audit" ("id" serial primary key)');
    expect(report.findings.find((f) => f.rule === 'index-not-concurrent')).toMatchObject({
      severity: 'warning',
      detail: 'index on existing table members',
    });
  });

  it('down-reverts-up catches a down that forgets to drop a column, and a missing down', async () => {
    const report = await lintFolders(BAD);
    const downs = report.findings.filter((f) => f.rule === 'down-reverts-up');
    expect(downs.map((f) => [f.migration, f.detail])).toEqual([
      ['007_member_nickname.ts', 'left behind: column members.nickname character varying(255)'],
      ['008_tags.ts', 'it has no down function'],
    ]);
  });

  it('passes the good files; a transaction: false migration is reported not-checked and not run', async () => {
    const report = await lintFolders(GOOD);
    expect(report.findings).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.files.map((f) => [f.migration, f.status])).toEqual([
      ['001_members.ts', 'checked'],
      ['002_member_email.ts', 'checked'],
      ['003_member_email_index.ts', 'not-checked'],
      ['004_notes.ts', 'checked'],
    ]);
    expect(report.files[2]!.reason).toContain('transaction: false');
    expect(report.files[2]!.statements).toBe(0);
    expect(report.files[0]!.statements).toBeGreaterThan(0);
  });

  it('disable comments switch rules off per file, and name the unknown ones', async () => {
    const report = await lintFolders(DISABLED);
    expect(report.findings).toEqual([]);
    expect(report.totals.suppressed).toBe(6);
    expect(report.files.map((f) => f.disabled)).toEqual([
      [],
      ['schema-qualified'],
      ['index-not-concurrent'],
      ['down-reverts-up', 'not-null-without-default'],
      ['search-path'],
    ]);
    expect(report.files[4]!.notes).toEqual(['unknown rule in a disable comment: no-such-rule']);
  });

  it('captures the SQL of in-memory migrations from query events, bound values included', async () => {
    const report = await inspect((db) =>
      lintMigrations(db.knex, {
        tenant: [
          inline('001_path.ts', (k) => k.raw('select set_config(?, ?, true)', ['search_path', 'public'])),
          inline('002_other_tenant.ts', (k) => k.raw('select count(*) from ??.??', ['tid_0123456789', 'pg_class'])),
        ],
      }),
    );
    // The second one fails (no such schema) and names another tenant: both are reported.
    expect(flagged(report)).toEqual([
      '001_path.ts search-path up',
      '002_other_tenant.ts schema-qualified up',
      '002_other_tenant.ts up-fails up',
    ]);
  });

  it('a failing up is up-fails; a failure after a not-run migration is not-checked, not an error', async () => {
    const report = await inspect((db) =>
      lintMigrations(db.knex, {
        tenant: [
          inline('001_broken.ts', (k) => k.raw('select * from no_such_table')),
          inline('002_after.ts', (k) => k.raw('create table after_broken (id int)'), {
            down: (k) => k.raw('drop table after_broken'),
          }),
          inline('003_concurrent.ts', (k) => k.raw('create table later (id int)'), { transaction: false }),
          inline('004_needs_later.ts', (k) => k.raw('alter table later add column note text')),
        ],
      }),
    );
    expect(flagged(report)).toEqual(['001_broken.ts up-fails up']);
    expect(report.findings[0]!.detail).toContain('no_such_table');
    expect(report.files.map((f) => f.status)).toEqual(['checked', 'checked', 'not-checked', 'not-checked']);
    expect(report.files[3]!.reason).toMatch(/^up failed after 001_broken\.ts could not be applied: .*later/);
  });

  it('master: pending migrations run on public with the master rules; applied ones are not run', async () => {
    const report = await lintFolders(WARN, MASTER);
    // 001 names public (fine for master); 002 adds a NOT NULL column without a default to it.
    expect(flagged(report)).toEqual([
      '002_lint_plan_tier.ts not-null-without-default up',
      '002_handle_index.ts index-not-concurrent up',
    ]);
    expect(report.findings[0]!.scope).toBe('master');

    const config = engine.config({ TENANT_EXTENSIONS: '', MASTER_MIGRATIONS_DIR: MASTER });
    const tk = await openToolkit(config);
    try {
      expect((await tk.migrateMaster()).error).toBeNull();
      const again = await lintMigrations(tk.knex, {
        tenant: await folderSource(WARN).load(),
        master: await folderSource(MASTER).load(),
      });
      expect(again.files.filter((f) => f.scope === 'master').map((f) => f.status)).toEqual([
        'already-applied',
        'already-applied',
      ]);
      expect(flagged(again)).toEqual(['002_handle_index.ts index-not-concurrent up']);
      // Master's tables are there for the tenant migrations to see, as in a deploy.
      expect((await tk.rollbackMaster({ all: true })).error).toBeNull();
      await tk.knex.schema.withSchema('public').dropTableIfExists('knex_migrations_master');
      await tk.knex.schema.withSchema('public').dropTableIfExists('knex_migrations_master_lock');
    } finally {
      await tk.close();
    }
  });

  it("lints the repository's own tenant migrations, the provisioner's extensions created in the transaction", async () => {
    const tenant = await folderSource(path.join(ROOT, 'tenant-migrations')).load();
    await inspect(async (db) => {
      const before = await catalog(db);
      const report = await lintMigrations(db.knex, { tenant }, { extensions: ['vector'], lockTimeoutMs: 5000 });
      if (engine.hasVector) {
        expect(report.findings).toEqual([]);
        expect(report.notes).toEqual([]);
      } else {
        // Without pgvector on the server the first migration cannot run; the report says why.
        expect(flagged(report)).toEqual(['20261121100001_tenant_init.ts up-fails up']);
        expect(report.notes[0]).toContain('extension vector is not available');
      }
      expect(await catalog(db)).toEqual(before);
    });
  });

  it('leaves nothing behind: no scratch schema, no table in public, the catalog unchanged', async () => {
    await inspect(async (db) => {
      const before = await catalog(db);
      const searchPath = (await db.knex.raw('show search_path')).rows[0].search_path;
      const tenant = await folderSource(BAD).load();
      const master = await folderSource(MASTER).load();
      const report = await lintMigrations(db.knex, { tenant, master }, { extensions: [] });
      expect(report.totals.errors).toBeGreaterThan(0);
      const after = await catalog(db);
      expect(after).toEqual(before);
      expect(after.filter((item) => item.includes('lint_scratch_'))).toEqual([]);
      expect(after).not.toContain('relation public.lint_audit');
      expect(after).not.toContain('relation public.lint_plans');
      // The pool's connection is clean: the transaction-local search path went with the rollback.
      expect((await db.knex.raw('show search_path')).rows[0].search_path).toBe(searchPath);
    });
  });
});

describe('pnpm migrate:lint', () => {
  const env = (tenantDir: string): Record<string, string> => ({
    ...engine.env,
    ...folders(MASTER, tenantDir),
    TENANT_EXTENSIONS: '',
  });

  it('prints one line per finding and a summary, and exits 1 on errors', async () => {
    const result = await runCli(['migrate:lint', '--no-master'], env(BAD));
    expect(result.code, result.stderr).toBe(1);
    const lines = result.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(9);
    expect(lines[0]).toBe(
      'tenant/002_public_audit.ts: schema-qualified (error): a tenant migration names the public or a tid_ schema; ' +
        'it must touch only the schema it runs in: public.lint_audit — create table "public"."lint_audit" ("id" serial primary key)',
    );
    expect(lines).toContain(
      'tenant/007_member_nickname.ts: down-reverts-up (error) [down]: down is missing or does not undo up ' +
        '(checked by running up, down, up in a scratch schema): left behind: column members.nickname character varying(255)',
    );
    expect(lines.at(-1)).toBe('Linted 8 tenant migrations: 7 errors, 1 warning');
  });

  it('exits 0 on warnings only; lints master by default and --tenant-dir overrides the folder', async () => {
    const warn = await runCli(['migrate:lint', '--no-master'], env(WARN));
    expect(warn.code, warn.stderr).toBe(0);
    expect(warn.stdout).toContain('tenant/002_handle_index.ts: index-not-concurrent (warning)');
    expect(warn.stdout.trimEnd().split('\n').at(-1)).toBe('Linted 2 tenant migrations: 0 errors, 1 warning');

    const withMaster = await runCli(['migrate:lint', '--tenant-dir', GOOD], env(BAD));
    expect(withMaster.code, withMaster.stderr).toBe(1);
    expect(withMaster.stdout).toContain('master/002_lint_plan_tier.ts: not-null-without-default (error)');
    expect(withMaster.stdout).toContain('tenant/003_member_email_index.ts: not-checked: transaction: false');
    expect(withMaster.stdout.trimEnd().split('\n').at(-1)).toBe(
      'Linted 4 tenant and 2 master migrations: 1 error, 0 warnings (1 not checked)',
    );
  });

  it('--json prints one document with the findings, files and totals', async () => {
    const result = await runCli(['migrate:lint', '--json', '--no-master'], env(DISABLED));
    expect(result.code, result.stderr).toBe(0);
    const doc = JSON.parse(result.stdout) as LintReport & { command: string };
    expect(doc).toMatchObject({ command: 'migrate:lint', ok: true, findings: [] });
    expect(doc.totals).toMatchObject({ files: 5, errors: 0, warnings: 0, suppressed: 6 });
    expect(doc.files[4]).toMatchObject({ migration: '005_path.ts', disabled: ['search-path'] });

    const bad = await runCli(['migrate:lint', '--json'], env(BAD));
    expect(bad.code, bad.stderr).toBe(1);
    const badDoc = JSON.parse(bad.stdout) as LintReport;
    expect(badDoc.ok).toBe(false);
    expect(badDoc.totals).toMatchObject({ errors: 8, warnings: 1 });
  });

  it('leaves nothing in the database after the CLI runs', async () => {
    await inspect(async (db) => {
      const items = await catalog(db);
      expect(items.filter((item) => item.includes('lint_scratch_') || item.includes('lint_'))).toEqual([]);
    });
  });
});
