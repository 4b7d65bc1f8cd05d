/**
 * `migrate:status` as an operator reads it, the real CLI against a real database: one row per
 * tenant with the pending count and the first pending name, tenants grouped by state, up-to-date
 * rows hidden above 50 tenants (`--all`, `--long`), `--json` with everything; and where the
 * positions come from: the registry digest by default, every tracking table with `--verify`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openToolkit, type Toolkit } from '../src/index.ts';
import { deployFolder, masterFolder, orgIds, provisionAll, resetTenants, V1 } from './fixtures/fan-kit/kit.ts';
import { type CliResult, folders, runCli } from './support/cli.ts';
import { startEngine, type TestEngine } from './support/engine.ts';

const V2 = [...V1, '003_path_probe.ts', '004_member_email.ts'];
const MASTER = masterFolder();
const FLEET = 55;
const BEHIND = 3;

let engine: TestEngine;
let ids: string[];
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

function cli(args: readonly string[], files: readonly string[] = V2): Promise<CliResult> {
  return runCli(args, { ...engine.env, ...folders(MASTER, deployFolder(files)), TENANT_EXTENSIONS: '' });
}

function lines(text: string): string[] {
  return text.split('\n').filter((l) => l.trim() !== '');
}

function rowOf(stdout: string, orgId: string): string[] | undefined {
  return lines(stdout)
    .find((l) => l.startsWith(`${orgId} `))
    ?.trim()
    .split(/\s{2,}/);
}

beforeAll(async () => {
  engine = await startEngine('status');
  ids = orgIds('st', FLEET);
  // FLEET tenants at V1, then all but the first BEHIND deployed to V2.
  schemas = await withTk(V1, async (tk) => {
    expect((await tk.migrateMaster()).error).toBeNull();
    await resetTenants(tk.knex);
    return provisionAll(tk, ids);
  });
  await withTk(V2, async (tk) => {
    const run = await tk.migrateTenants({ orgIds: ids.slice(BEHIND) });
    expect(run.totals).toMatchObject({ migrated: FLEET - BEHIND, failed: 0 });
  });
});

afterAll(async () => {
  await engine?.stop();
});

describe('migrate:status, readable', () => {
  it('shows the pending count and the first pending name; above 50 tenants only those not up to date, grouped, with a summary', async () => {
    const result = await cli(['migrate:status']);
    expect(result.code, result.stderr).toBe(0);
    const out = lines(result.stdout);
    for (const id of ids.slice(0, BEHIND)) {
      expect(rowOf(result.stdout, id)).toEqual([
        id,
        schemas.get(id),
        'ACTIVE',
        '2',
        '2',
        '003_path_probe.ts',
        'behind',
      ]);
    }
    // Up-to-date rows are hidden and counted.
    for (const id of ids.slice(BEHIND)) expect(rowOf(result.stdout, id)).toBeUndefined();
    expect(out).toContain(`${FLEET - BEHIND} up-to-date tenants not shown (--all lists every tenant)`);
    expect(out).toContain(`-- behind (${BEHIND})`);
    expect(out).not.toContain('004_member_email.ts');
    expect(out.at(-1)).toBe(`${FLEET - BEHIND} up to date, ${BEHIND} behind, 0 failed`);
    expect(Math.max(...out.map((l) => l.length))).toBeLessThan(160);
  });

  it('--all lists every tenant, worst group first; --long lists every pending name under its row', async () => {
    const all = await cli(['migrate:status', '--all']);
    expect(all.code, all.stderr).toBe(0);
    const out = lines(all.stdout);
    for (const id of ids.slice(BEHIND)) {
      expect(rowOf(all.stdout, id)).toEqual([id, schemas.get(id), 'ACTIVE', '4', '0', '-', 'up-to-date']);
    }
    expect(out.indexOf(`-- behind (${BEHIND})`)).toBeLessThan(out.indexOf(`-- up to date (${FLEET - BEHIND})`));
    expect(out.indexOf(`-- behind (${BEHIND})`)).toBeGreaterThan(0);
    expect(out.join('\n')).not.toContain('not shown');

    const long = await cli(['migrate:status', '--long']);
    expect(long.code, long.stderr).toBe(0);
    const longOut = lines(long.stdout);
    const at = longOut.findIndex((l) => l.startsWith(`${ids[0]} `));
    expect(longOut[at + 1]).toBe('    pending: 003_path_probe.ts, 004_member_email.ts');
    expect(longOut).toContain(`${FLEET - BEHIND} up-to-date tenants not shown (--all lists every tenant)`);
  });

  it('--json keeps every tenant and every pending name', async () => {
    const result = await cli(['migrate:status', '--json']);
    expect(result.code, result.stderr).toBe(0);
    const doc = JSON.parse(result.stdout);
    expect(doc.command).toBe('migrate:status');
    expect(doc.tenants).toHaveLength(FLEET);
    expect(doc.tenants[0]).toEqual({
      orgId: ids[0],
      schema: schemas.get(ids[0]!),
      status: 'ACTIVE',
      state: 'behind',
      applied: 2,
      pending: ['003_path_probe.ts', '004_member_email.ts'],
      missing: [],
      error: null,
    });
    expect(doc.summary).toEqual({
      'up-to-date': FLEET - BEHIND,
      behind: BEHIND,
      failed: 0,
      'schema-missing': 0,
      'not-active': 0,
      total: FLEET,
    });
    // Every tenant was placed by its registry digest (V1 and V2 are both positions of the folder).
    expect(doc).toMatchObject({ source: 'digest', trusted: FLEET });
  });
});

describe('migrate:status, where positions come from', () => {
  it('trusts the registry digest by default; --verify reads the tracking table and finds a hand edit', async () => {
    const victim = ids[FLEET - 1]!;
    const schema = schemas.get(victim)!;
    await withTk(V2, async (tk) => {
      const { migrations_digest: digest } = await tk.knex('tenants').where('clerk_org_id', victim).first();
      await tk.knex.withSchema(schema).from('knex_migrations_tenant').where('name', '004_member_email.ts').delete();
      // Left stale by hand (as if the change had gone around every guard).
      await tk.knex('tenants').where('clerk_org_id', victim).update({ migrations_digest: digest });
    });

    const trusted = JSON.parse((await cli(['migrate:status', '--json'])).stdout);
    expect(trusted.tenants.find((t: { orgId: string }) => t.orgId === victim)).toMatchObject({
      state: 'up-to-date',
      applied: 4,
    });

    const verified = await cli(['migrate:status', '--verify', '--json']);
    expect(verified.code, verified.stderr).toBe(0);
    const doc = JSON.parse(verified.stdout);
    expect(doc).toMatchObject({ source: 'verify', trusted: 0 });
    expect(doc.tenants.find((t: { orgId: string }) => t.orgId === victim)).toMatchObject({
      state: 'behind',
      applied: 3,
      pending: ['004_member_email.ts'],
    });
    expect(doc.summary).toMatchObject({ 'up-to-date': FLEET - BEHIND - 1, behind: BEHIND + 1 });

    const text = await cli(['migrate:status', '--verify']);
    expect(rowOf(text.stdout, victim)).toEqual([victim, schema, 'ACTIVE', '3', '1', '004_member_email.ts', 'behind']);
  });

  it('a dropped schema shows as missing even where the digest would place it', async () => {
    const lost = ids[FLEET - 2]!;
    await withTk(V2, (tk) => tk.knex.raw('drop schema ?? cascade', [schemas.get(lost)!]));
    const doc = JSON.parse((await cli(['migrate:status', '--json'])).stdout);
    expect(doc.tenants.find((t: { orgId: string }) => t.orgId === lost)).toMatchObject({ state: 'schema-missing' });
    expect(doc.summary['schema-missing']).toBe(1);
  });
});
