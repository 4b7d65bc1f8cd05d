import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import knexFactory, { type Knex } from 'knex';
import { register } from 'tsx/esm/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withDedicatedConnection } from '../src/db/dedicated.ts';
import {
  digestOf,
  folderSource,
  type MigrationSource,
  openToolkit,
  schemaNameFor,
  type Toolkit,
  tenantSearchPath,
} from '../src/index.ts';
import { TRACKING_TRIGGER } from '../src/migrations/tracking.ts';
import { adoptTenants } from '../src/tenants/adopt.ts';
import { folders, runCli } from './support/cli.ts';
import { FIXTURES, ROOT, startEngine, type TestEngine } from './support/engine.ts';

/*
 * `tenants:adopt` on schemas made the way seed scripts made them: a plain Knex loop, one
 * `create schema` and one `knex.migrate.latest({ schemaName })` per org, and no registry rows.
 * On PGlite only one process may have the folder open, so the toolkit is opened in-process only
 * between CLI runs.
 */

const MASTER = path.join(ROOT, 'master-migrations');
const BASE = path.join(FIXTURES, 'adopt-base');
const NEXT = path.join(FIXTURES, 'adopt-next');
const FIRST = '20240101000001_accounts.ts';
const NAMES = [FIRST, '20240101000002_notes.ts'];
const TAGS = '20240301000003_tags.ts';
const ORGS = ['org_adopt_a', 'org_adopt_b', 'org_adopt_c'];
const GHOST = 'org_adopt_ghost'; // has a schema, is in no map: listed as unmatched
const BARE = 'org_adopt_bare'; // a tid_ schema without a tracking table
const NOPE = 'org_adopt_nope'; // in the map, no schema
const STACK = /^\s+at /m;

let engine: TestEngine;
let env: Record<string, string>;
let unregister: (() => Promise<void>) | undefined;
const tmp = mkdtempSync(path.join(os.tmpdir(), 'adopt-'));

beforeAll(async () => {
  // Knex's migrator imports the .ts fixtures with Node's own import(), as `node --import tsx` would.
  unregister = register();
  engine = await startEngine('adopt');
  env = { ...engine.env, ...folders(MASTER, BASE), TENANT_EXTENSIONS: '' };
});

afterAll(async () => {
  await unregister?.();
  await engine?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

/** A toolkit for a moment (the CLI must not be running on PGlite meanwhile). */
async function withToolkit<T>(cb: (tk: Toolkit) => Promise<T>, tenant?: MigrationSource): Promise<T> {
  const tk = await openToolkit(
    engine.config({ TENANT_MIGRATIONS_DIR: BASE, TENANT_EXTENSIONS: '' }),
    tenant ? { sources: { tenant } } : {},
  );
  try {
    return await cb(tk);
  } finally {
    await tk.close();
  }
}

/**
 * Runs `cb` with plain Knex aimed at one tenant: on a server a Knex instance whose `searchPath`
 * is the schema; PGlite has one connection, so there one connection of the pool with its
 * search_path set.
 */
async function withPlainKnex(knex: Knex, schema: string, cb: (plain: Knex) => Promise<unknown>): Promise<void> {
  if (engine.url) {
    const plain = knexFactory({
      client: 'pg',
      connection: engine.url,
      searchPath: [schema, 'public'],
      pool: { min: 0, max: 1 },
    });
    try {
      await cb(plain);
    } finally {
      await plain.destroy();
    }
  } else {
    await withDedicatedConnection(knex, async (conn) => {
      await conn.raw("select set_config('search_path', ?, false)", [tenantSearchPath(schema)]);
      await cb(conn);
      await conn.raw('reset search_path');
    });
  }
}

/** Plain Knex's migrator options for a tenant, as a seed script passes them. */
function knexOptions(schema: string, directory: string | string[] = BASE) {
  return { directory, schemaName: schema, tableName: 'knex_migrations_tenant', loadExtensions: ['.ts'] };
}

/** The seed script: for each org, `create schema`, then Knex's own migrator. */
async function knexLoop(knex: Knex, orgIds: readonly string[]): Promise<void> {
  for (const orgId of orgIds) {
    const schema = schemaNameFor(orgId);
    await knex.raw('create schema ??', [schema]);
    await withPlainKnex(knex, schema, (plain) => plain.migrate.latest(knexOptions(schema)));
  }
}

/** The tid_ schemas whose tracking table carries the toolkit's trigger. */
async function triggered(knex: Knex): Promise<string[]> {
  const rows = await knex.raw(
    `select n.nspname as schema from pg_trigger g join pg_class c on c.oid = g.tgrelid
       join pg_namespace n on n.oid = c.relnamespace
      where g.tgname = ? and c.relname = 'knex_migrations_tenant' order by 1`,
    [TRACKING_TRIGGER],
  );
  return rows.rows.map((r: { schema: string }) => r.schema);
}

/** Everything adoption may write: the registry rows and the fleet's checksums. */
async function written(knex: Knex): Promise<unknown> {
  const tenants = await knex.raw(
    `select clerk_org_id, schema_name, status, migrations_digest, labels, created_at, updated_at
       from public.tenants order by id`,
  );
  const checksums = (await knex.raw("select to_regclass('public.knex_migrations_checksums') is not null as present"))
    .rows[0].present
    ? (await knex.raw('select scope, name, checksum, recorded_at from public.knex_migrations_checksums order by 1, 2'))
        .rows
    : null;
  return { tenants: tenants.rows, checksums };
}

async function applied(knex: Knex, schema: string): Promise<string[]> {
  const rows = await knex.raw('select name from ??.knex_migrations_tenant order by id', [schema]);
  return rows.rows.map((r: { name: string }) => r.name);
}

/** stderr without the embedded engine's notice (PGlite prints where its data is). */
function errorLines(stderr: string): string[] {
  return stderr
    .trim()
    .split('\n')
    .filter((line) => !line.startsWith('Using the embedded PostgreSQL'));
}

function mapFile(name: string, text: string): string {
  const file = path.join(tmp, name);
  writeFileSync(file, text);
  return file;
}

// Each CLI run starts Node and tsx: generous limits for a busy machine.
describe('tenants:adopt', { timeout: 400_000 }, () => {
  it('refuses with exit 2 while there is no registry, naming pnpm migrate:master', async () => {
    await withToolkit(async (tk) => {
      await knexLoop(tk.knex, [...ORGS, GHOST]);
      await tk.knex.raw('create schema ??', [schemaNameFor(BARE)]);
      await tk.knex.raw('create table ??.accounts (id int)', [schemaNameFor(BARE)]);
      expect(await applied(tk.knex, schemaNameFor('org_adopt_a'))).toEqual(NAMES);
    });
    const result = await runCli(['tenants:adopt', '--map', mapFile('first.csv', `${ORGS.join('\n')}\n`)], env);
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toMatch(/public\.tenants does not exist: run `pnpm migrate:master` first/);
    expect(errorLines(result.stderr)).toHaveLength(1);
    await withToolkit(async (tk) => void (await tk.migrateMaster()));
  });

  it('--dry-run reports what it would adopt and writes nothing', async () => {
    const before = await withToolkit((tk) => written(tk.knex));
    const map = mapFile('orgs.csv', ['org_id', ...ORGS, BARE, NOPE, ''].join('\n'));
    const result = await runCli(['tenants:adopt', '--map', map, '--dry-run', '--json'], env);
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout);
    expect(report).toMatchObject({ command: 'tenants:adopt', dryRun: true, given: 5 });
    expect(report.adopted.map((a: { orgId: string }) => a.orgId)).toEqual(ORGS);
    expect(report.checksums).toEqual({ recorded: 2, conflicts: [] });
    expect(await withToolkit((tk) => written(tk.knex))).toEqual(before);
    expect(await withToolkit((tk) => triggered(tk.knex))).toEqual([]);
  });

  it('--map registers the Knex-made schemas ACTIVE with their digest and checksums, and reports the rest', async () => {
    const map = mapFile('orgs.json', JSON.stringify([...ORGS, BARE, NOPE]));
    const result = await runCli(['tenants:adopt', '--map', map, '--json'], env);
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout);
    expect(report.dryRun).toBe(false);
    expect(report.adopted).toEqual(
      ORGS.map((orgId) => ({
        orgId,
        schema: schemaNameFor(orgId),
        applied: 2,
        digest: digestOf(NAMES),
        notInFolder: [],
      })),
    );
    expect(report.alreadyRegistered).toEqual([]);
    expect(report.refused).toEqual([{ orgId: BARE, schema: schemaNameFor(BARE), reason: 'not-tracked' }]);
    expect(report.notFound).toEqual([{ orgId: NOPE, schema: schemaNameFor(NOPE) }]);
    expect(report.unmatched).toEqual([schemaNameFor(GHOST)]);
    expect(report.checksums).toEqual({ recorded: 2, conflicts: [] });

    await withToolkit(async (tk) => {
      const rows = await tk.knex.raw(
        'select clerk_org_id, schema_name, status, migrations_digest from public.tenants order by id',
      );
      expect(rows.rows).toEqual(
        ORGS.map((orgId) => ({
          clerk_org_id: orgId,
          schema_name: schemaNameFor(orgId),
          status: 'ACTIVE',
          migrations_digest: digestOf(NAMES),
        })),
      );
      const sums = await tk.knex.raw(
        "select name, checksum from public.knex_migrations_checksums where scope = 'tenant' order by name",
      );
      const local = await folderSource(BASE).load();
      expect(sums.rows).toEqual(local.map((m) => ({ name: m.name, checksum: m.checksum })));
      // The unmatched schema is untouched: still only Knex's history, no registry row, no trigger.
      expect(await applied(tk.knex, schemaNameFor(GHOST))).toEqual(NAMES);
      expect(await triggered(tk.knex)).toEqual(ORGS.map((o) => schemaNameFor(o)).sort());
    });
  });

  it('adopting twice is a no-op: everything already registered, nothing written', async () => {
    const before = await withToolkit((tk) => written(tk.knex));
    const map = mapFile('again.csv', `${ORGS.join('\n')}\n`);
    const result = await runCli(['tenants:adopt', '--map', map], env);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('3 org ids: 0 adopted, 3 already registered, 0 refused, 0 without a schema');
    expect(result.stdout).toContain(
      `Already registered (nothing to do):\n  org_adopt_a → ${schemaNameFor('org_adopt_a')}`,
    );
    expect(result.stdout).toContain(
      `tid_ schemas matching no org id given (left untouched):\n  ${schemaNameFor(GHOST)}`,
    );
    expect(await withToolkit((tk) => written(tk.knex))).toEqual(before);
  });

  it('migrate:tenants then trusts the adopted digests without reading the schemas, and applies a new migration', async () => {
    let queued = -1;
    const idle = await withToolkit((tk) => tk.migrateTenants({ onStart: (_total, toRun) => (queued = toRun) }));
    expect(queued).toBe(0); // no adopted tenant was scanned or run: the digest alone said up to date
    expect(idle.tenants.map((t) => [t.orgId, t.outcome])).toEqual(ORGS.map((o) => [o, 'up-to-date']));

    const next: MigrationSource = {
      load: async () => [...(await folderSource(BASE).load()), ...(await folderSource(NEXT).load())],
    };
    await withToolkit(async (tk) => {
      const run = await tk.migrateTenants();
      const byOrg = [...run.tenants].sort((x, y) => x.orgId.localeCompare(y.orgId));
      expect(byOrg.map((t) => [t.orgId, t.outcome, t.migrations])).toEqual(ORGS.map((o) => [o, 'migrated', [TAGS]]));
      for (const orgId of ORGS) expect(await applied(tk.knex, schemaNameFor(orgId))).toEqual([...NAMES, TAGS]);
      const digests = await tk.knex.raw('select distinct migrations_digest from public.tenants');
      expect(digests.rows).toEqual([{ migrations_digest: digestOf([...NAMES, TAGS]) }]);
      expect(await applied(tk.knex, schemaNameFor(GHOST))).toEqual(NAMES); // never registered, never migrated

      // The seed scripts still run: plain Knex rolls one adopted tenant back. Its trigger clears the
      // digest, so the next run reads it and re-applies the migration without --verify.
      const b = schemaNameFor('org_adopt_b');
      await withPlainKnex(tk.knex, b, (plain) => plain.migrate.rollback(knexOptions(b, [BASE, NEXT])));
      expect(await applied(tk.knex, b)).toEqual(NAMES);
      const again = await tk.migrateTenants();
      expect(again.tenants.filter((t) => t.outcome !== 'up-to-date').map((t) => [t.orgId, t.migrations])).toEqual([
        ['org_adopt_b', [TAGS]],
      ]);
    }, next);
  });

  it('--query takes the org ids from the first column of a read-only SELECT', async () => {
    await withToolkit(async (tk) => {
      await knexLoop(tk.knex, ['org_adopt_q']);
      await tk.knex.raw('create schema app');
      await tk.knex.raw('create table app.organizations (org_id text, name text)');
      await tk.knex.raw('insert into app.organizations values (?, ?), (?, ?)', [
        'org_adopt_q',
        'Q?',
        'org_adopt_a',
        'A',
      ]);
    });
    const query =
      "select org_id, name from app.organizations where name like '%?%' or org_id = 'org_adopt_a' order by 1";
    const result = await runCli(['tenants:adopt', '--query', query, '--json'], env);
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout);
    expect(
      report.adopted.map((a: { orgId: string }) => a.orgId),
      result.stdout,
    ).toEqual(['org_adopt_q']);
    expect(report.alreadyRegistered.map((a: { orgId: string }) => a.orgId)).toEqual(['org_adopt_a']);
    expect(report.unmatched).toEqual([schemaNameFor(BARE), schemaNameFor(GHOST)].sort());

    await withToolkit(async (tk) => {
      const adopt = (sql: string) => adoptTenants(tk.knex, folderSource(BASE), { kind: 'query', sql });
      for (const bad of ['delete from app.organizations returning org_id', 'select 1; commit; drop schema app cascade'])
        await expect(adopt(bad)).rejects.toThrow(/^--query must be exactly one SELECT statement/);
      await expect(
        adopt('with d as (delete from app.organizations returning org_id) select org_id from d'),
      ).rejects.toMatchObject({
        exitCode: 2,
        message: expect.stringMatching(/^--query failed: .*read-only transaction/),
      });
      await expect(adopt("select 'not an org id!'")).rejects.toThrow(/^--query: row 1: Invalid org id/);
      expect((await tk.knex.raw('select count(*)::int as n from app.organizations')).rows[0].n).toBe(2);
    });
  });

  it('refuses a schema the registry gives to another org, and reports checksums recorded differently without overwriting them', async () => {
    await withToolkit(async (tk) => {
      await knexLoop(tk.knex, ['org_adopt_d', 'org_adopt_e']);
      await tk.knex.raw(
        "insert into public.tenants (clerk_org_id, schema_name, status) values ('org_taken', ?, 'ACTIVE')",
        [schemaNameFor('org_adopt_d')],
      );
      await tk.knex.raw("update public.knex_migrations_checksums set checksum = 'edited' where name = ?", [FIRST]);
      const report = await adoptTenants(tk.knex, folderSource(BASE), {
        kind: 'list',
        orgIds: ['org_adopt_d', 'org_adopt_e'],
      });
      expect(report.refused).toEqual([
        {
          orgId: 'org_adopt_d',
          schema: schemaNameFor('org_adopt_d'),
          reason: 'schema-registered',
          otherOrgId: 'org_taken',
        },
      ]);
      expect(report.adopted.map((a) => a.orgId)).toEqual(['org_adopt_e']);
      expect(report.checksums).toEqual({ recorded: 0, conflicts: [FIRST] });
      const kept = await tk.knex.raw('select checksum from public.knex_migrations_checksums where name = ?', [FIRST]);
      expect(kept.rows).toEqual([{ checksum: 'edited' }]);
    });
  });

  it('two adopt runs at once register each schema once; the loser reports it already registered', async () => {
    const racers = ['org_adopt_r1', 'org_adopt_r2', 'org_adopt_r3', 'org_adopt_r4'];
    await withToolkit(async (tk) => {
      await knexLoop(tk.knex, racers);
      // On a server they race on separate connections; on PGlite the pool's one connection queues them.
      const reports = await Promise.all(
        [racers.slice(0, 3), racers.slice(1).reverse()].map((orgIds) =>
          adoptTenants(tk.knex, folderSource(BASE), { kind: 'list', orgIds }),
        ),
      );
      const adopted = reports.flatMap((r) => r.adopted.map((a) => a.orgId)).sort();
      expect(adopted).toEqual(racers);
      const already = reports.flatMap((r) => r.alreadyRegistered.map((a) => a.orgId)).sort();
      expect(already).toEqual(['org_adopt_r2', 'org_adopt_r3']);
      expect(reports.flatMap((r) => r.refused)).toEqual([]);
      const rows = await tk.knex.raw(
        "select clerk_org_id, status from public.tenants where clerk_org_id like 'org_adopt_r%' order by 1",
      );
      expect(rows.rows).toEqual(racers.map((clerk_org_id) => ({ clerk_org_id, status: 'ACTIVE' })));
    });
  });

  it('a bad map file is one line and exit 2, before connecting', async () => {
    // The other refusals of a file (JSON that is not an array, an unknown extension, no ids) are unit-tested.
    const cases: [string[], RegExp][] = [
      [['--map', path.join(tmp, 'missing.csv')], /^error: Cannot read map file .*missing\.csv: no such file$/],
      [
        ['--map', mapFile('bad.csv', 'org_ok\norg bad\n')],
        /^error: Map file .*bad\.csv: line 2: Invalid org id "org bad"/,
      ],
      [
        ['--map', mapFile('bad.json', '{"org": "x"}')],
        /^error: Map file .*bad\.json: expected a JSON array of org ids$/,
      ],
      [[], /^error: Give the org ids with exactly one of --map <file> and --query <sql>$/],
    ];
    // None of them opens the database, so they may run side by side even on PGlite.
    const results = await Promise.all(cases.map(([args]) => runCli(['tenants:adopt', ...args], env)));
    for (const [index, [, message]] of cases.entries()) {
      const result = results[index]!;
      expect(result.code, result.stderr).toBe(2);
      expect(result.stdout).toBe('');
      expect(result.stderr.trim()).toMatch(message);
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
      expect(result.stderr).not.toMatch(STACK);
    }
  });
});
