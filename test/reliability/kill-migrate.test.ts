/**
 * SIGKILL of `migrate:tenants` half-way through a run over 30 tenants. Promise under test: each
 * tenant's batch commits with its tracking rows or not at all, so after the kill every tenant is
 * at the old or the new version (never between), no advisory lock outlives the process, and a
 * rerun finishes the job, applying each migration exactly once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  advisoryLocks,
  BASE_DIR,
  checksumNames,
  cliEnv,
  NEXT,
  NEXT_DIR,
  orgIds,
  PROGRESS,
  session,
  setUpTenants,
  snapshot,
  versionOf,
  waitFor,
  watch,
  withTk,
} from '../fixtures/rel-support/support.ts';
import { startCli } from '../support/cli.ts';
import { startEngine, type TestEngine } from '../support/engine.ts';

const ORGS = orgIds('org_kill', 30);
let engine: TestEngine;

beforeAll(async () => {
  engine = await startEngine('rel_kill_migrate');
  await setUpTenants(engine, BASE_DIR, ORGS);
});

afterAll(async () => {
  await engine?.stop();
});

describe('SIGKILL of migrate:tenants mid-run', () => {
  it('leaves every tenant at the old or the new version, holds no lock, and a rerun finishes the job', async () => {
    const admin = engine.multiSession ? await session(engine) : undefined;
    try {
      // 150 ms per tenant, at most 3 at once (1 on PGlite): the run lasts a few seconds.
      const run = watch(
        startCli(['migrate:tenants', '--concurrency', '3'], cliEnv(engine, NEXT_DIR, { REL_SLEEP_MS: '150' })),
      );
      const done = await run.lines(PROGRESS, 5);
      if (admin) {
        // Kill while a tenant's transaction holds its advisory lock, so that "no lock left" means something.
        await waitFor('a tenant lock held by the run', async () => (await advisoryLocks(admin)).some((l) => l.granted));
      }
      const killed = await run.kill();
      expect(killed.signal).toBe('SIGKILL');

      if (admin) {
        // The server rolls back a dead client's transaction (once its current statement ends) and frees its locks.
        await waitFor(
          'the killed run to leave no advisory lock',
          async () => (await advisoryLocks(admin)).length === 0,
        );
        expect(await advisoryLocks(admin)).toEqual([]);
      }

      // Reopening (on PGlite: taking over the stale folder lock of the killed process).
      const finishedOrgs = done.map((line) => line.match(PROGRESS)![1]);
      await withTk(engine, NEXT_DIR, async (tk) => {
        const states = await snapshot(tk.knex);
        expect(states.size).toBe(ORGS.length);
        const versions = [...states.values()].map((s) => ({
          schema: s.schema,
          version: versionOf(s),
          applied: s.applied,
        }));
        expect(versions.filter((v) => v.version === 'between')).toEqual([]);
        // A tenant whose progress line was printed had committed.
        const bySchema = new Map((await tk.status()).tenants.map((t) => [t.orgId, t.schema]));
        for (const orgId of finishedOrgs) expect(versionOf(states.get(bySchema.get(orgId!)!)!)).toBe('new');
        // The ledger: the killed run is shown interrupted, and its tenant rows are exactly the
        // tenants whose tracking tables gained the new batch (written in the same transaction).
        const [killedRun] = await tk.runs();
        expect(killedRun).toMatchObject({ command: 'migrate:tenants', outcome: 'interrupted' });
        const detail = await tk.run(killedRun!.id);
        const migratedSchemas = [...states.values()].filter((s) => versionOf(s) === 'new').map((s) => s.schema);
        expect(detail!.tenants.map((t) => t.schema).sort()).toEqual(migratedSchemas.sort());
        for (const row of detail!.tenants) {
          expect(row).toMatchObject({
            outcome: 'migrated',
            direction: 'up',
            migrations: ['002_notes.ts', '003_tags.ts'],
          });
          const applied = states.get(row.schema)!.applied;
          expect(applied.filter((a) => a.endsWith(`@${row.batch}`)).map((a) => a.split('@')[0])).toEqual(
            row.migrations,
          );
        }
        const status = await tk.status();
        expect(status.ledger?.interrupted.map((r) => r.id)).toContain(killedRun!.id);
        expect(status.orphans).toEqual([]);
        expect(
          status.tenants.every((t) => t.status === 'ACTIVE' && (t.state === 'up-to-date' || t.state === 'behind')),
        ).toBe(true);
      });

      const rerun = watch(startCli(['migrate:tenants'], cliEnv(engine, NEXT_DIR)));
      const result = await rerun.result;
      expect(result.stderr).not.toMatch(/error/i);
      expect(result.code).toBe(0);
      const totals = result.stdout.match(/30 tenants: (\d+) migrated, (\d+) up to date, 0 failed, 0 skipped/);
      expect(totals).not.toBeNull();
      expect(Number(totals![2])).toBeGreaterThanOrEqual(finishedOrgs.length);

      await withTk(engine, NEXT_DIR, async (tk) => {
        const states = [...(await snapshot(tk.knex)).values()];
        expect(states.map(versionOf)).toEqual(ORGS.map(() => 'new'));
        // Exactly once each: the tracking rows are exactly the three files.
        for (const s of states) expect(s.applied.map((a) => a.split('@')[0])).toEqual([...NEXT]);
        expect(await checksumNames(tk.knex)).toEqual([...NEXT]);
        expect((await tk.status()).summary['up-to-date']).toBe(ORGS.length);
        // The ledger shows both runs: the rerun succeeded, the killed one stays interrupted.
        expect((await tk.runs()).slice(0, 2).map((r) => r.outcome)).toEqual(['succeeded', 'interrupted']);
      });
    } finally {
      await admin?.end();
    }
  });
});
