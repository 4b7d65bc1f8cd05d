import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Database, folderSource, loadConfig, withDatabase } from '../src/index.ts';
import { finished, folders, runCli, startCli } from './support/cli.ts';
import { FIXTURES, ROOT, startEngine, type TestEngine } from './support/engine.ts';

/*
 * The CLI as a user runs it, as a child process against the test engine. On PGlite only one
 * process may have the folder open, so this file only opens it in-process between CLI runs.
 */

const MASTER = path.join(ROOT, 'master-migrations');
const MASTER_NAMES = [
  '20261121000001_create_tenants.ts',
  '20261121000002_create_focus_areas.ts',
  '20261121000003_create_coaching_categories.ts',
  '20261202000001_run_ledger.ts',
  '20261202000002_tenant_labels.ts',
  '20261202000003_tracking_trigger.ts',
  '20261202000010_ledger_tenants_run.ts',
  '20261202000011_tenant_lifecycle_statuses.ts',
  '20261203000001_tenant_servers.ts',
];
const STACK = /^\s+at /m;

let engine: TestEngine;
let env: Record<string, string>;
const tmp = mkdtempSync(path.join(os.tmpdir(), 'cli-basics-'));

beforeAll(async () => {
  engine = await startEngine('cli_basics');
  env = { ...engine.env, ...folders(MASTER, path.join(FIXTURES, 'tenant-plain')), TENANT_EXTENSIONS: '' };
});

afterAll(async () => {
  await engine?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

/** Opens the test database in this process for a moment (the CLI must not be running on PGlite). */
function inspect<T>(cb: (db: Database) => Promise<T>): Promise<T> {
  return withDatabase(engine.config({ TENANT_EXTENSIONS: '' }), cb);
}

async function publicTables(db: Database): Promise<string[]> {
  const result = await db.knex.raw(
    "select table_name from information_schema.tables where table_schema = 'public' order by 1",
  );
  return result.rows.map((r: { table_name: string }) => r.table_name);
}

describe('migrate:master and rollback:master', () => {
  it('applies the three master migrations, is then up to date, rolls the batch back, and --json prints one document', async () => {
    const first = await runCli(['migrate:master'], env);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toBe(`Applied ${MASTER_NAMES.length} master migrations: ${MASTER_NAMES.join(', ')}\n`);

    const second = await runCli(['migrate:master'], env);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).toBe('Already up to date\n');

    const down = await runCli(['rollback:master'], env);
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).toBe(
      `Rolled back ${MASTER_NAMES.length} master migrations: ${[...MASTER_NAMES].reverse().join(', ')}\n`,
    );
    await inspect(async (db) => {
      const tables = await publicTables(db);
      expect(tables).not.toContain('tenants');
      expect(tables).not.toContain('focus_areas');
      expect(tables).toContain('knex_migrations_master');
      const rows = await db
        .knex('knex_migrations_master')
        .withSchema('public')
        .count<{ count: string }[]>('* as count');
      expect(Number(rows[0]!.count)).toBe(0);
    });

    // Machines get exactly one JSON document on stdout (notices, if any, go to stderr).
    const json = await runCli(['migrate:master', '--json'], env);
    expect(json.code, json.stderr).toBe(0);
    expect(json.stdout.startsWith('{')).toBe(true);
    const doc = JSON.parse(json.stdout) as Record<string, unknown>;
    expect(doc).toMatchObject({
      command: 'migrate:master',
      schema: 'public',
      outcome: 'migrated',
      direction: 'up',
      batch: 1,
      migrations: MASTER_NAMES,
      error: null,
      warnings: [],
    });
    expect(doc.results).toEqual(MASTER_NAMES.map((name) => ({ name, direction: 'up', status: 'Success' })));
  });

  it('keeps Knex-format history: the knex CLI lists the same migrations from the same tables', async () => {
    await inspect(async (db) => {
      const columns = await db.knex.raw(
        `select table_name, column_name, data_type from information_schema.columns
          where table_schema = 'public' and table_name in ('knex_migrations_master', 'knex_migrations_master_lock')
          order by table_name, ordinal_position`,
      );
      expect(columns.rows).toEqual([
        { table_name: 'knex_migrations_master', column_name: 'id', data_type: 'integer' },
        { table_name: 'knex_migrations_master', column_name: 'name', data_type: 'character varying' },
        { table_name: 'knex_migrations_master', column_name: 'batch', data_type: 'integer' },
        { table_name: 'knex_migrations_master', column_name: 'migration_time', data_type: 'timestamp with time zone' },
        { table_name: 'knex_migrations_master_lock', column_name: 'index', data_type: 'integer' },
        { table_name: 'knex_migrations_master_lock', column_name: 'is_locked', data_type: 'integer' },
      ]);
      expect((await db.knex.raw('select is_locked from public.knex_migrations_master_lock')).rows).toEqual([
        { is_locked: 0 },
      ]);

      // What `knex --knexfile knexfile.ts migrate:list` runs: Knex's own migrator over our tables.
      const [completed, pending] = await db.knex.migrate.list({
        directory: MASTER,
        tableName: 'knex_migrations_master',
        schemaName: 'public',
        loadExtensions: ['.ts'],
      });
      expect(completed.map((m: { name: string }) => m.name)).toEqual(MASTER_NAMES);
      expect(pending).toEqual([]);
      // Knex found its lock row and did not add another.
      expect((await db.knex.raw('select count(*)::int as n from public.knex_migrations_master_lock')).rows[0].n).toBe(
        1,
      );
    });
  });
});

describe('migrate:make:master and migrate:make:tenant', () => {
  const KINDS = [
    { kind: 'master', variable: 'MASTER_MIGRATIONS_DIR' },
    { kind: 'tenant', variable: 'TENANT_MIGRATIONS_DIR' },
  ] as const;

  it('write a timestamped .ts migration from the template into the configured folder', async () => {
    const runs = await Promise.all(
      KINDS.map(async ({ kind, variable }) => {
        const dir = path.join(tmp, `made-${kind}`, 'nested'); // created on demand
        return {
          kind,
          dir,
          result: await runCli([`migrate:make:${kind}`, `add_${kind}_colour`], { ...engine.env, [variable]: dir }),
        };
      }),
    );
    for (const { kind, dir, result } of runs) {
      expect(result.code, result.stderr).toBe(0);
      const files = readdirSync(dir);
      expect(files).toHaveLength(1);
      const file = files[0]!;
      expect(file).toMatch(new RegExp(`^\\d{14}_add_${kind}_colour\\.ts$`));
      // The path is shown relative to the working folder (a temporary one here).
      expect(result.stdout).toMatch(/^Created \S+\n$/);
      expect(result.stdout.trim().endsWith(path.join(`made-${kind}`, 'nested', file))).toBe(true);
      // Knex's timestamp: UTC, YYYYMMDDHHMMSS, close to now.
      const stamp = file.slice(0, 14);
      const written = Date.UTC(
        +stamp.slice(0, 4),
        +stamp.slice(4, 6) - 1,
        +stamp.slice(6, 8),
        +stamp.slice(8, 10),
        +stamp.slice(10, 12),
        +stamp.slice(12, 14),
      );
      expect(Math.abs(Date.now() - written)).toBeLessThan(10 * 60_000);
      const text = readFileSync(path.join(dir, file), 'utf8');
      expect(text).toContain('export async function up(knex: Knex): Promise<void>');
      expect(text).toContain('export async function down(knex: Knex): Promise<void>');
      // The template is a migration the toolkit loads as it is.
      const [migration] = await folderSource(dir).load();
      expect(migration).toMatchObject({ name: file, transaction: true });
      expect(typeof migration!.down).toBe('function');
    }
  });

  it('reject a bad or missing name with exit code 2 and write nothing', async () => {
    const runs = await Promise.all([
      ...KINDS.map(({ kind, variable }) =>
        runCli([`migrate:make:${kind}`, '../escape me'], { ...engine.env, [variable]: path.join(tmp, `bad-${kind}`) }),
      ),
      runCli(['migrate:make:tenant'], { ...engine.env, TENANT_MIGRATIONS_DIR: path.join(tmp, 'bad-unnamed') }),
    ]);
    for (const result of runs.slice(0, 2)) {
      expect(result.code).toBe(2);
      expect(result.stderr).toBe('error: Invalid migration name "../escape me": use letters, digits, "_" and "-"\n');
    }
    expect(runs[2]!.code).toBe(2);
    expect(runs[2]!.stderr).toMatch(/^error: missing required argument 'name'$/m);
    expect(readdirSync(tmp).filter((f) => f.startsWith('bad-') || f.startsWith('escape'))).toEqual([]);
  });
});

describe('usage errors', () => {
  it('an unknown command or option exits 2 with a one-line reason and no stack', async () => {
    const [command, option] = await Promise.all([
      runCli(['migrate:everything'], env),
      runCli(['migrate:master', '--dry-run-please'], env),
    ]);
    expect(command.code).toBe(2);
    expect(command.stderr).toMatch(/^error: unknown command 'migrate:everything'$/m);
    expect(option.code).toBe(2);
    expect(option.stderr).toMatch(/^error: unknown option '--dry-run-please'$/m);
    for (const result of [command, option]) {
      expect(result.stderr).not.toMatch(STACK);
      expect(result.stdout).toBe('');
    }
  });
});

describe('the embedded default', () => {
  // Always its own PGlite folder, whatever the test engine is.
  const dataDir = path.join(tmp, 'embedded-data');
  const gate = path.join(FIXTURES, 'prov-gate');
  const embeddedEnv = {
    PGLITE_DATA_DIR: dataDir,
    ...folders(gate, path.join(FIXTURES, 'tenant-plain')),
    TENANT_EXTENSIONS: '',
  };

  it('announces itself in one line; a second process on the same folder fails with one clear line; the folder works afterwards', async () => {
    const ready = path.join(tmp, 'gate-ready');
    const release = path.join(tmp, 'gate-release');
    // Only PGLITE_DATA_DIR says where the database is. The migration waits for us inside it.
    const holder = startCli(['migrate:master'], { ...embeddedEnv, PROV_GATE_READY: ready, PROV_GATE_RELEASE: release });
    const holderDone = finished(holder);
    try {
      await waitFor(() => existsSync(ready), holderDone);
      const second = await runCli(['migrate:master'], embeddedEnv);
      expect(second.code).not.toBe(0);
      expect(second.code).not.toBeNull();
      expect(second.stderr).toBe(
        `error: The embedded database at ${dataDir} is in use by another process (pid ${holder.pid}); stop it or set PGLITE_DATA_DIR to another folder\n`,
      );
      expect(second.stdout).toBe('');
    } finally {
      writeFileSync(release, '');
    }
    const first = await holderDone;
    expect(first.code, first.stderr).toBe(0);
    expect(first.stderr).toBe(`Using the embedded PostgreSQL (PGlite with pgvector); data in ${dataDir}\n`);
    expect(first.stdout).toBe('Applied 1 master migration: 001_prov_gate.ts\n');
    expect(readdirSync(dataDir)).toContain('PG_VERSION');
    // Nothing left holding the folder.
    expect(readdirSync(dataDir)).not.toContain('.embedded.lock');

    // The folder opens again, with the first process's work committed exactly once.
    await withDatabase(loadConfig(embeddedEnv, ROOT), async (db) => {
      expect(await publicTables(db)).toContain('prov_gate_done');
      expect((await db.knex.raw('select name from public.knex_migrations_master')).rows).toEqual([
        { name: '001_prov_gate.ts' },
      ]);
    });
    const again = await runCli(['migrate:master'], embeddedEnv);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toBe('Already up to date\n');
  });
});

/** Waits until `ready()` holds; fails early if the process it waits on has exited. */
async function waitFor(ready: () => boolean, exited: Promise<{ code: number | null; stderr: string }>): Promise<void> {
  let gone: { code: number | null; stderr: string } | undefined;
  void exited.then((r) => (gone = r));
  const deadline = Date.now() + 90_000;
  while (!ready()) {
    if (gone) throw new Error(`the first process exited (${gone.code}) before it opened the database: ${gone.stderr}`);
    if (Date.now() > deadline) throw new Error('the first process never reached its migration');
    await new Promise((r) => setTimeout(r, 50));
  }
}
