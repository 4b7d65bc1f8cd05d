/**
 * `migrate:status --drift`: every tenant schema fingerprinted from the catalog, grouped by the
 * migrations applied, and the ones that differ from their version's majority listed with the
 * objects that differ. Real CLI, real database. Promises under test: a column added by hand to
 * one tenant of five is found and named; the schema's own name (in defaults, index and
 * constraint definitions, function bodies) makes no difference; tenants at another version are
 * not compared with these.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openToolkit, type Toolkit } from '../src/index.ts';
import { deployFolder, masterFolder, orgIds, provisionAll, resetTenants, V1 } from './fixtures/fan-kit/kit.ts';
import { type CliResult, folders, runCli } from './support/cli.ts';
import { startEngine, type TestEngine } from './support/engine.ts';

const V2 = [...V1, '003_path_probe.ts', '004_member_email.ts'];
const MASTER = masterFolder();

let engine: TestEngine;
let ids: string[];
let old: string[];
let schemas: Map<string, string>;

async function withTk<T>(files: readonly string[], cb: (tk: Toolkit) => Promise<T>): Promise<T> {
  const tk = await openToolkit(
    engine.config({ MASTER_MIGRATIONS_DIR: MASTER, TENANT_MIGRATIONS_DIR: deployFolder(files), TENANT_EXTENSIONS: '' }),
  );
  try {
    return await cb(tk);
  } finally {
    await tk.close();
  }
}

function cli(args: readonly string[]): Promise<CliResult> {
  return runCli(args, { ...engine.env, ...folders(MASTER, deployFolder(V2)), TENANT_EXTENSIONS: '' });
}

// biome-ignore lint/suspicious/noExplicitAny: a parsed CLI document, read field by field by the assertions
async function driftJson(): Promise<any> {
  const result = await cli(['migrate:status', '--drift', '--json']);
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout).drift;
}

beforeAll(async () => {
  engine = await startEngine('drift');
  ids = orgIds('drift', 5);
  old = orgIds('drift_old', 2);
  schemas = await withTk(V2, async (tk) => {
    expect((await tk.migrateMaster()).error).toBeNull();
    await resetTenants(tk.knex);
    const current = await provisionAll(tk, ids);
    // Objects whose definitions name the schema: a function (body and search_path), a trigger,
    // a foreign key and an index on an expression, the same in every tenant.
    for (const schema of current.values()) {
      await tk.knex.raw(
        `create function ??.touch() returns trigger language plpgsql set search_path = ${schema}, public
           as $$ begin perform 1 from ${schema}.settings; return new; end $$`,
        [schema],
      );
      await tk.knex.raw(
        'create trigger members_touch before insert on ??.members for each row execute function ??.touch()',
        [schema, schema],
      );
      await tk.knex.raw('create table ??.notes (id serial primary key, member_id int references ??.members (id))', [
        schema,
        schema,
      ]);
      await tk.knex.raw('create index notes_lower on ??.notes (lower(member_id::text))', [schema]);
    }
    return current;
  });
  for (const [id, schema] of await withTk(V1, (tk) => provisionAll(tk, old))) schemas.set(id, schema);
});

afterAll(async () => {
  await engine?.stop();
});

describe('migrate:status --drift', () => {
  it('finds no drift among tenants whose schemas differ only by their name', async () => {
    const drift = await driftJson();
    expect(drift).toMatchObject({ tenants: 7, versions: 2, drifted: 0, groups: [] });
    const text = await cli(['migrate:status', '--drift']);
    expect(text.stdout).toContain('No drift: 7 tenants over 2 applied versions');
  });

  it('names a column added by hand to one tenant of five, and a column changed in another', async () => {
    const [hotfixed, changed] = [ids[2]!, ids[4]!];
    await withTk(V2, async (tk) => {
      await tk.knex.raw('alter table ??.members add column hotfix int', [schemas.get(hotfixed)!]);
      await tk.knex.raw('alter table ??.members alter column email type text', [schemas.get(changed)!]);
      // An old tenant with the same hot-fix is at another version: compared only with its own.
      await tk.knex.raw('alter table ??.members add column hotfix int', [schemas.get(old[0]!)!]);
    });
    const drift = await driftJson();
    expect(drift.drifted).toBe(3);
    const v2 = drift.groups.find((g: { version: { applied: number } }) => g.version.applied === 4);
    expect(v2).toMatchObject({ tenants: 5, fingerprints: 3, tie: false, majority: { tenants: 3 } });
    const byTenant = new Map(
      v2.outliers.map((o: { tenants: { orgId: string }[]; diff: unknown }) => [o.tenants[0]!.orgId, o.diff]),
    );
    expect(byTenant.get(hotfixed)).toEqual([{ object: 'column members.hotfix', change: 'added', outlier: 'integer' }]);
    expect(byTenant.get(changed)).toEqual([
      { object: 'column members.email', change: 'changed', outlier: 'text', majority: 'character varying(255)' },
    ]);
    // Two old tenants, one hot-fixed: a tie, reported as such.
    const v1 = drift.groups.find((g: { version: { applied: number } }) => g.version.applied === 2);
    expect(v1).toMatchObject({ tenants: 2, fingerprints: 2, tie: true });

    const text = await cli(['migrate:status', '--drift']);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain(`${hotfixed} (${schemas.get(hotfixed)}) differs from`);
    expect(text.stdout).toContain('+ column members.hotfix (only here): integer');
    expect(text.stdout).toContain('~ column members.email: character varying(255) → text');
    expect(text.stdout).toContain('3 tenants of 7 differ from the majority at their version');
    // The tenant table and its summary are still there, last line the summary.
    expect(text.stdout.trim().split('\n').at(-1)).toBe('5 up to date, 2 behind, 0 failed');
  });
});
