/**
 * Two `migrate:tenants` and two `provision:tenant` of one new org, started at the same time.
 * Promise under test: every migration is applied exactly once everywhere (the per-schema lock
 * makes the second run of a tenant find it up to date), the new org ends ACTIVE once, and every
 * process succeeds. On PGlite only one process may open the database: the others are refused at
 * once with a clear message and write nothing, and the one that got in does the whole job.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { schemaNameFor } from '../../src/index.ts';
import {
  BASE_DIR,
  checksumNames,
  cliEnv,
  hasStack,
  NEXT,
  NEXT_DIR,
  orgIds,
  registryRows,
  setUpTenants,
  snapshot,
  versionOf,
  waitFor,
  watch,
  withTk,
} from '../fixtures/rel-support/support.ts';
import { type CliResult, startCli } from '../support/cli.ts';
import { startEngine, type TestEngine } from '../support/engine.ts';

const ORGS = orgIds('org_race', 10);
const NEW_ORG = 'org_race_new';
let engine: TestEngine;

beforeAll(async () => {
  engine = await startEngine('rel_concurrent');
  await setUpTenants(engine, BASE_DIR, ORGS);
});

afterAll(async () => {
  await engine?.stop();
});

const TOTALS = /(\d+) tenants: (\d+) migrated, (\d+) up to date, 0 failed, (\d+) skipped/;

function migratedCount(result: CliResult): number {
  const totals = result.stdout.match(TOTALS);
  expect(totals, result.stdout + result.stderr).not.toBeNull();
  return Number(totals![2]);
}

/** Every tenant at the new version with each migration recorded once; the new org ACTIVE in one batch. */
async function expectEachMigrationOnce(newOrg: 'active' | 'absent'): Promise<void> {
  await withTk(engine, NEXT_DIR, async (tk) => {
    const states = await snapshot(tk.knex);
    const rows = await registryRows(tk.knex);
    for (const orgId of ORGS) {
      const state = states.get(rows.find((r) => r.orgId === orgId)!.schema)!;
      expect({ orgId, version: versionOf(state), names: state.applied.map((a) => a.split('@')[0]) }).toEqual({
        orgId,
        version: 'new',
        names: [...NEXT],
      });
    }
    const fresh = rows.find((r) => r.orgId === NEW_ORG);
    if (newOrg === 'absent') {
      expect(fresh).toBeUndefined();
      expect(states.has(schemaNameFor(NEW_ORG))).toBe(false);
    } else {
      expect(fresh).toMatchObject({ schema: schemaNameFor(NEW_ORG), status: 'ACTIVE', error: null });
      expect(states.get(schemaNameFor(NEW_ORG))!.applied).toEqual(NEXT.map((n) => `${n}@1`));
    }
    expect(await checksumNames(tk.knex)).toEqual([...NEXT]);
    expect((await tk.status()).orphans).toEqual([]);
  });
}

describe('concurrent runs', () => {
  it('two migrate:tenants and two provision:tenant at once: every migration applied exactly once everywhere', async () => {
    const slow = cliEnv(engine, NEXT_DIR, { REL_SLEEP_MS: '100' });
    if (!engine.multiSession) {
      // The first run holds its first tenant's transaction open until the others are done.
      const dir = mkdtempSync(path.join(os.tmpdir(), 'rel-hold-'));
      const [marker, hold] = [path.join(dir, 'hang'), path.join(dir, 'hold')];
      writeFileSync(hold, '');
      const first = watch(startCli(['migrate:tenants'], { ...slow, REL_HANG_MARKER: marker, REL_HOLD_FILE: hold }));
      await waitFor('the first run to be inside a tenant migration', () => existsSync(marker));
      const others = await Promise.all([
        watch(startCli(['migrate:tenants'], slow)).result,
        watch(startCli(['provision:tenant', NEW_ORG], slow)).result,
        watch(startCli(['provision:tenant', NEW_ORG], slow)).result,
      ]);
      for (const result of others) {
        expect(result.code).toBe(1);
        expect(result.stdout).toBe('');
        const errors = result.stderr.split('\n').filter((l) => l.startsWith('error:'));
        expect(errors).toEqual([
          expect.stringMatching(
            new RegExp(
              `^error: The embedded database at \\S+ is in use by another process \\(pid ${first.child.pid}\\)`,
            ),
          ),
        ]);
        expect(hasStack(result.stderr)).toBe(false);
      }
      rmSync(hold);
      const done = await first.result;
      expect(done.code).toBe(0);
      expect(migratedCount(done)).toBe(ORGS.length);
      await expectEachMigrationOnce('absent');
      return;
    }
    const results = await Promise.all([
      watch(startCli(['migrate:tenants', '--concurrency', '3'], slow)).result,
      watch(startCli(['migrate:tenants', '--concurrency', '3'], slow)).result,
      watch(startCli(['provision:tenant', NEW_ORG], slow)).result,
      watch(startCli(['provision:tenant', NEW_ORG], slow)).result,
    ]);
    for (const result of results) {
      expect(result.stderr).toBe('');
      expect(result.code).toBe(0);
    }
    const [a, b, p1, p2] = results as [CliResult, CliResult, CliResult, CliResult];
    // Each tenant was migrated by exactly one of the two runs; the other found it up to date.
    expect(migratedCount(a) + migratedCount(b)).toBe(ORGS.length);
    // One provisioner did the work; the other waited for the lock and found it done.
    const outcomes = [p1.stdout, p2.stdout]
      .map((out) =>
        out.startsWith('Provisioned') ? 'provisioned' : out.includes('already ACTIVE') ? 'already-active' : out,
      )
      .sort();
    expect(outcomes).toEqual(['already-active', 'provisioned']);
    await expectEachMigrationOnce('active');
  });
});
