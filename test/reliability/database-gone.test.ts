/**
 * The database going away under a running command: a storm of dropped connections, every
 * connection cut at a named step of a command (the proxy withholds that statement, or delivers a
 * COMMIT and loses its answer), and the database vanishing for good. Promise under test: a clear
 * message naming host:port (never "unexpected error", never a stack), a non-zero exit, every
 * tenant at the old or the new version, the registry consistent with the schemas (ACTIVE if and
 * only if the schema is complete; no schema without a row), and a rerun that completes the job.
 *
 * On a server the CLI connects through a TCP proxy in this process; the storm terminates the
 * backends from a second session. On PGlite, a PGlite server child serves the engine's folder over
 * TCP (one connection at a time, DB_POOL_MAX=1) behind the same proxy, and going away for good
 * is a SIGKILL of that child.
 */
import { existsSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { schemaNameFor } from '../../src/index.ts';
import { connectTarget, type Target } from '../fixtures/rel-support/network.ts';
import {
  BASE_DIR,
  checksumNames,
  cliEnv,
  folderWith,
  hasStack,
  NEXT,
  NEXT_DIR,
  orgIds,
  PROGRESS,
  registryRows,
  session,
  setUpTenants,
  snapshot,
  tenantArgs,
  versions,
  waitFor,
  watch,
  withTkAt,
} from '../fixtures/rel-support/support.ts';
import { type CliResult, runCli, startCli } from '../support/cli.ts';
import { startEngine, type TestEngine } from '../support/engine.ts';

const STORM = orgIds('org_storm', 8);
const FANOUT = orgIds('org_cutfan', 3);
const GONE = orgIds('org_gone', 8);
/** What a lost connection may be called by the driver or the server. */
const CONNECTION_LOST = /connection|terminat|ECONNRESET|ECONNREFUSED/i;

let engine: TestEngine;

beforeAll(async () => {
  engine = await startEngine('rel_db_gone');
  await setUpTenants(engine, BASE_DIR, [...STORM, ...FANOUT, ...GONE]);
});

afterAll(async () => {
  await engine?.stop();
});

/** A failed command's output: one clear line per problem, naming where the database was. */
function expectClearFailure(result: CliResult, where: string): void {
  expect(result.code).not.toBe(0);
  expect(result.code).not.toBeNull();
  expect(hasStack(result.stdout + result.stderr)).toBe(false);
  const errors = result.stderr.split('\n').filter((l) => l.startsWith('error:'));
  for (const line of errors) {
    expect(line).not.toMatch(/unexpected error/);
    expect(line).toContain(where);
  }
  for (const line of result.stdout.split('\n').filter((l) => /FAILED/.test(l))) expect(line).toMatch(CONNECTION_LOST);
}

/** Arms the proxy's cut; the returned function says whether it has fired (so that a test cannot pass without its fault). */
function armCut(db: Target, pattern: RegExp, options: { forward?: boolean } = {}): () => boolean {
  let fired = false;
  void db.proxy!.cutAt(pattern, options).then(() => (fired = true));
  return () => fired;
}

describe('connections dropped while a command runs', () => {
  let db: Target;
  let where: string;

  beforeAll(async () => {
    db = await connectTarget(engine, { proxy: true });
    where = new URL(db.env.DATABASE_URL!).host;
  });

  afterAll(async () => {
    await db?.close();
  });

  it('a storm of dropped connections: those tenants fail unchanged, the run goes on, the rerun finishes', async () => {
    // The storm starts while the first tenant hangs in 002_notes.ts, so that seven tenants are
    // still to come, and it stops after two failures: the run outlasts it whatever the timing.
    const marker = path.join(mkdtempSync(path.join(os.tmpdir(), 'rel-marker-')), 'hang');
    const slow = { REL_SLEEP_MS: '150', REL_HANG_MARKER: marker, REL_HANG_MS: engine.multiSession ? '60000' : '1000' };
    const env = { ...cliEnv(engine, NEXT_DIR, slow), ...db.env, DB_POOL_MAX: '1' };
    const run = watch(startCli(['migrate:tenants', '--concurrency', '1', ...tenantArgs(STORM)], env));
    await waitFor('the first tenant to hang in 002_notes.ts', () => existsSync(marker));
    const admin = engine.multiSession ? await session(engine) : undefined;
    try {
      // Drop every connection, again and again, until two tenants have failed (checked before
      // each round, so that a slow test process cannot strike once more at the end of the run).
      const failures = (): number =>
        run
          .stdout()
          .split('\n')
          .filter((l) => PROGRESS.test(l) && l.includes('FAILED')).length;
      await waitFor('two tenants to fail in the storm', async () => {
        if (failures() >= 2 || run.child.exitCode !== null) return true;
        if (admin)
          await admin.query(
            'select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()',
          );
        else db.proxy!.cut();
        await new Promise((resolve) => setTimeout(resolve, 25));
        return false;
      });
    } finally {
      await admin?.end();
    }
    const result = await run.result;
    expectClearFailure(result, where);
    const totals = result.stdout.match(/8 tenants: (\d+) migrated, 0 up to date, (\d+) failed, 0 skipped/);
    expect(totals, result.stdout + result.stderr).not.toBeNull();
    expect(Number(totals![2])).toBeGreaterThanOrEqual(2);
    const lines = result.stdout.split('\n').filter((l) => PROGRESS.test(l));
    const failed = lines.filter((l) => l.includes('FAILED')).map((l) => l.match(PROGRESS)![1]!);
    const after = await versions(db.direct, STORM);
    expect(Object.values(after).filter((v) => v === 'between')).toEqual([]);
    for (const org of STORM) expect(after[org]).toBe(failed.includes(org) ? 'old' : 'new');

    const rerun = await runCli(['migrate:tenants', ...tenantArgs(STORM)], { ...cliEnv(engine, NEXT_DIR), ...db.env });
    expect(rerun.code).toBe(0);
    expect(rerun.stdout).toContain(`8 tenants: ${failed.length} migrated, ${8 - failed.length} up to date, 0 failed`);
    expect(Object.values(await versions(db.direct, STORM))).toEqual(STORM.map(() => 'new'));
  });

  /**
   * provision:tenant with every connection cut at one step. The extra file 004 is new to this
   * database each time, so that recording its checksum is a step that really happens.
   */
  const stages = [
    { step: 'registering the org', cut: /insert into "?public"?\."?tenants\b/, forward: false },
    { step: 'a migration inside the schema transaction', cut: /^create table "items"/, forward: false },
    { step: 'COMMIT (delivered, its answer lost)', cut: /^COMMIT/, forward: true },
    {
      step: 'recording checksums after the commit',
      cut: /insert into "?public"?\."?knex_migrations_checksums\b/,
      forward: false,
    },
  ];

  it.each(stages.map((s, i) => ({ ...s, i })))(
    'provision:tenant cut at $step: the registry matches the schema, the rerun provisions',
    async ({ cut, forward, i }) => {
      const orgId = `org_cutprov_${i}`;
      const schema = schemaNameFor(orgId);
      const extra = `004_extra_${i}.ts`;
      const dir = folderWith(NEXT_DIR, { [extra]: 'export async function up(): Promise<void> {}\n' });
      const files = [...NEXT, extra];
      const fired = armCut(db, cut, { forward });
      const result = await runCli(['provision:tenant', orgId], { ...cliEnv(engine, dir), ...db.env });
      expect(fired(), result.stdout + result.stderr).toBe(true);
      // After the commit the tenant may honestly be reported provisioned; before it, the run failed.
      if (result.code === 0) expect(result.stdout).toMatch(new RegExp(`^Provisioned ${orgId} `));
      else expectClearFailure(result, where);
      await expectRegistryMatchesSchema(orgId, files);

      // Provisioning again (here through the library, as an application's webhook would retry) completes it.
      await withTkAt(db.direct, dir, async (tk) => {
        expect((await tk.provisionTenant(orgId)).error).toBeNull();
        expect((await registryRows(tk.knex)).find((r) => r.orgId === orgId)).toMatchObject({
          schema,
          status: 'ACTIVE',
        });
        expect((await snapshot(tk.knex)).get(schema)?.applied.map((a) => a.split('@')[0])).toEqual(files);
        expect(await checksumNames(tk.knex)).toEqual(expect.arrayContaining(files));
      });
    },
  );

  /** ACTIVE if and only if the schema holds every migration; PROVISIONING or FAILED: no schema; never an orphan. */
  async function expectRegistryMatchesSchema(orgId: string, files: readonly string[]): Promise<void> {
    const schema = schemaNameFor(orgId);
    await withTkAt(db.direct, NEXT_DIR, async (tk) => {
      const row = (await registryRows(tk.knex)).find((r) => r.orgId === orgId);
      const state = (await snapshot(tk.knex)).get(schema);
      const complete = state !== undefined && state.applied.map((a) => a.split('@')[0]).join() === files.join();
      if (row === undefined || row.status !== 'ACTIVE') {
        expect({ status: row?.status, schemaExists: state !== undefined }).toEqual({
          status: row?.status,
          schemaExists: false,
        });
      } else {
        expect(complete).toBe(true);
      }
      if (complete) expect(row?.status).toBe('ACTIVE');
      expect((await tk.status()).orphans).toEqual([]);
    });
  }

  it('migrate:tenants cut while recording checksums after the last tenant: a clear message, and the rerun records them', async () => {
    const dir = folderWith(NEXT_DIR, { '005_more.ts': 'export async function up(): Promise<void> {}\n' });
    const fired = armCut(db, /insert into "?public"?\."?knex_migrations_checksums\b/);
    const result = await runCli(['migrate:tenants', ...tenantArgs(FANOUT)], { ...cliEnv(engine, dir), ...db.env });
    expect(fired(), result.stdout + result.stderr).toBe(true);
    expectClearFailure(result, where);
    await withTkAt(db.direct, dir, async (tk) => {
      const states = await snapshot(tk.knex);
      for (const row of (await registryRows(tk.knex)).filter((r) => FANOUT.includes(r.orgId))) {
        expect(states.get(row.schema)?.applied.map((a) => a.split('@')[0])).toEqual([...NEXT, '005_more.ts']);
      }
    });
    // Every tenant is up to date now, so the rerun applies nothing; the checksums of what was
    // applied must still end up recorded, or an edit of those files would go unnoticed.
    const rerun = await runCli(['migrate:tenants', ...tenantArgs(FANOUT)], { ...cliEnv(engine, dir), ...db.env });
    expect(rerun.code).toBe(0);
    await withTkAt(db.direct, dir, async (tk) => {
      expect(await checksumNames(tk.knex)).toEqual(expect.arrayContaining([...NEXT, '005_more.ts']));
    });
  });

  it('migrate:status cut while it reads the registry: one clear line naming host:port, exit 1', async () => {
    const fired = armCut(db, /from "?public"?\."?tenants\b/);
    const result = await runCli(['migrate:status'], { ...cliEnv(engine, NEXT_DIR), ...db.env });
    expect(fired(), result.stdout + result.stderr).toBe(true);
    expectClearFailure(result, where);
    expect(result.stderr.split('\n').filter((l) => l.startsWith('error:'))).toHaveLength(1);
  });
});

describe('the database goes away for good', () => {
  it('mid-run: a clear message naming host:port, exit 1, tenants old or new, registry rows untouched; the rerun finishes', async () => {
    const db = await connectTarget(engine, { proxy: engine.multiSession });
    try {
      const registryBefore = await withTkAt(db.direct, NEXT_DIR, async (tk) =>
        (await registryRows(tk.knex)).filter((r) => GONE.includes(r.orgId)),
      );
      const where = new URL(db.env.DATABASE_URL!).host;
      const env = { ...cliEnv(engine, NEXT_DIR, { REL_SLEEP_MS: '200' }), ...db.env, DB_POOL_MAX: '1' };
      const run = watch(startCli(['migrate:tenants', '--concurrency', '1', ...tenantArgs(GONE)], env));
      const before = await run.lines(PROGRESS, 3);
      await db.goAway();
      const result = await run.result;
      expect(result.code).toBe(1);
      expectClearFailure(result, where);

      const direct = await db.restore();
      const after = await versions(direct, GONE);
      expect(Object.values(after).filter((v) => v === 'between')).toEqual([]);
      for (const line of before) expect(after[line.match(PROGRESS)![1]!]).toBe('new');
      await withTkAt(direct, NEXT_DIR, async (tk) => {
        const rows = (await registryRows(tk.knex)).filter((r) => GONE.includes(r.orgId));
        const withoutErrors = (list: typeof rows) => list.map(({ lastMigrationError: _ignored, ...rest }) => rest);
        expect(withoutErrors(rows)).toEqual(withoutErrors(registryBefore));
      });

      const rerun = await runCli(['migrate:tenants', ...tenantArgs(GONE)], { ...cliEnv(engine, NEXT_DIR), ...direct });
      expect(rerun.code).toBe(0);
      expect(Object.values(await versions(await db.restore(), GONE))).toEqual(GONE.map(() => 'new'));
    } finally {
      await db.close();
    }
  });
});
