/**
 * Runs that race: two `migrate:tenants` processes at once, two runs in one process, and a run
 * killed inside a tenant's transaction. The per-schema advisory lock and the one-transaction
 * batch are what keep every tenant migrated exactly once.
 *
 * On a server the contenders really run side by side (the test holds every tenant's lock until
 * both processes are waiting on it). The embedded engine admits one process at a time: there the
 * second process must fail at once with one clear line while the first completes untouched.
 */

import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LOCK_NAMESPACE } from '../src/db/locks.ts';
import { type FanoutReport, openToolkit, type Toolkit } from '../src/index.ts';
import {
  deployed,
  deployFolder,
  masterFolder,
  orgIds,
  provisionAll,
  resetTenants,
  tablesIn,
  tracking,
  V1,
} from './fixtures/fan-kit/kit.ts';
import { type CliResult, finished, folders, runCli, startCli } from './support/cli.ts';
import { startEngine, type TestEngine } from './support/engine.ts';

const SLOW = [...V1, '008_slow_insert.ts'];
const MASTER = masterFolder();

let engine: TestEngine;

async function withTk<T>(cb: (tk: Toolkit) => Promise<T>, overrides: Record<string, string> = {}): Promise<T> {
  const tk = await openToolkit(
    engine.config({
      MASTER_MIGRATIONS_DIR: MASTER,
      TENANT_MIGRATIONS_DIR: deployFolder(V1),
      TENANT_EXTENSIONS: '',
      ...overrides,
    }),
  );
  try {
    return await cb(tk);
  } finally {
    await tk.close();
  }
}

function setup(ids: readonly string[]): Promise<Map<string, string>> {
  return withTk(async (tk) => {
    await resetTenants(tk.knex);
    return provisionAll(tk, ids);
  });
}

function cliEnv(extra: Record<string, string> = {}): Record<string, string> {
  return { ...engine.env, ...folders(MASTER, deployFolder(SLOW)), TENANT_EXTENSIONS: '', ...extra };
}

interface Running {
  readonly child: ChildProcess;
  readonly done: Promise<CliResult>;
}

function start(args: readonly string[], env: Record<string, string>): Running {
  const child = startCli(args, env);
  return { child, done: finished(child) };
}

/** Polls until `condition` holds; fails at once if a watched process ends first (the deadline only guards a hang). */
async function until(
  what: string,
  condition: () => boolean | Promise<boolean>,
  watch: readonly Running[] = [],
): Promise<void> {
  const deadline = Date.now() + 100_000;
  while (!(await condition())) {
    for (const run of watch) {
      if (run.child.exitCode !== null || run.child.signalCode !== null) {
        const result = await run.done;
        throw new Error(
          `waiting until ${what}: a CLI process ended first (exit ${result.code}):\n${result.stdout}\n${result.stderr}`,
        );
      }
    }
    if (Date.now() > deadline) throw new Error(`gave up waiting until ${what}`);
    await sleep(50);
  }
}

/** Sessions of this database waiting for one of the toolkit's advisory locks. */
async function lockWaiters(knex: Knex): Promise<number> {
  const result = await knex.raw(
    `select count(distinct pid) as n from pg_locks
      where locktype = 'advisory' and not granted and classid = ?::oid
        and database = (select oid from pg_database where datname = current_database())`,
    [LOCK_NAMESPACE],
  );
  return Number(result.rows[0].n);
}

/** Sessions of this database waiting for a table lock. */
async function relationWaiters(knex: Knex): Promise<number> {
  const result = await knex.raw(
    `select count(*) as n from pg_locks
      where locktype = 'relation' and not granted and database = (select oid from pg_database where datname = current_database())`,
  );
  return Number(result.rows[0].n);
}

function gatePath(): string {
  return path.join(mkdtempSync(path.join(os.tmpdir(), 'fan-gate-')), 'open');
}

function errorLines(result: CliResult): string[] {
  return result.stderr.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('Using the embedded PostgreSQL'));
}

/** Every tenant holds exactly one row of 008 and one tracking row per migration. */
async function expectAppliedOnce(schemas: Iterable<string>): Promise<void> {
  await withTk(async (tk) => {
    for (const schema of schemas) {
      expect(
        await tk.knex.withSchema(schema).from('members').where({ handle: 'slow' }).pluck('handle'),
        schema,
      ).toEqual(['slow']);
      expect(await tracking(tk.knex, schema), schema).toEqual([
        { name: '001_members.ts', batch: 1 },
        { name: '002_settings.ts', batch: 1 },
        { name: '008_slow_insert.ts', batch: 2 },
      ]);
    }
  });
}

beforeAll(async () => {
  engine = await startEngine('tenants-race');
  const report = await withTk((tk) => tk.migrateMaster());
  expect(report.error).toBeNull();
});

afterAll(async () => {
  await engine?.stop();
});

describe('concurrent tenant runs', () => {
  it('two migrate:tenants processes at once never apply a migration twice nor interleave on a tenant', {
    timeout: 240_000,
  }, async () => {
    const ids = orgIds('race', 40);
    const schemas = await setup(ids);

    if (engine.multiSession) {
      const env = cliEnv({ DB_POOL_MAX: '4' });
      const args = ['migrate:tenants', '--json', '--concurrency', '4'];
      let first!: Running;
      let second!: Running;
      await withTk(async (tk) => {
        // Hold every tenant's lock until both processes are blocked on it: then they start racing together.
        await tk.knex.transaction(async (trx) => {
          for (const schema of schemas.values())
            await trx.raw('select pg_advisory_xact_lock(?, hashtext(?))', [LOCK_NAMESPACE, schema]);
          first = start(args, env);
          second = start(args, env);
          await until(
            'both processes wait on tenant locks (4 workers each)',
            async () => (await lockWaiters(tk.knex)) === 8,
            [first, second],
          );
        });
      });
      const results = await Promise.all([first.done, second.done]);
      const reports = results.map((result) => {
        expect(result.code, result.stderr).toBe(0);
        return JSON.parse(result.stdout) as FanoutReport;
      });
      for (const report of reports) expect(report.totals).toMatchObject({ failed: 0, skipped: 0, total: 40 });
      // Each tenant was migrated by exactly one of them; the other found it up to date.
      for (const id of ids) {
        const outcomes = reports.map((r) => r.tenants.find((t) => t.orgId === id)!.outcome).sort();
        expect(outcomes, id).toEqual(['migrated', 'up-to-date']);
      }
      expect(reports[0]!.totals.migrated + reports[1]!.totals.migrated).toBe(40);
    } else {
      // The first process is held inside its first tenant's migration while the second tries the folder.
      const gate = gatePath();
      const first = start(['migrate:tenants', '--json'], cliEnv({ FAN_GATE: gate }));
      await until('the first process is inside a tenant migration', () => existsSync(`${gate}.waiting`), [first]);
      const second = await runCli(['migrate:tenants', '--json'], cliEnv());
      expect(second.code).toBe(1);
      expect(second.stdout).toBe('');
      expect(errorLines(second)).toEqual([
        expect.stringMatching(
          new RegExp(`^error: The embedded database at .* is in use by another process \\(pid ${first.child.pid}\\)`),
        ),
      ]);
      writeFileSync(gate, '');
      const result = await first.done;
      expect(result.code, result.stderr).toBe(0);
      expect((JSON.parse(result.stdout) as FanoutReport).totals).toEqual({
        migrated: 40,
        'up-to-date': 0,
        failed: 0,
        skipped: 0,
        total: 40,
      });
    }

    await expectAppliedOnce(schemas.values());
  });

  it('two runs in one process (two pools on a server, one shared pool embedded) apply each migration once', async () => {
    const ids = orgIds('twin', 12);
    const schemas = await setup(ids);

    const reports = await withTk(
      async (tk) => {
        if (!engine.multiSession)
          return Promise.all([deployed(tk, SLOW).migrateTenants(), deployed(tk, SLOW).migrateTenants()]);
        const other = await openToolkit(tk.config);
        try {
          let runs!: Promise<[FanoutReport, FanoutReport]>;
          await tk.knex.transaction(async (trx) => {
            for (const schema of schemas.values())
              await trx.raw('select pg_advisory_xact_lock(?, hashtext(?))', [LOCK_NAMESPACE, schema]);
            runs = Promise.all([
              deployed(tk, SLOW).migrateTenants({ concurrency: 2 }),
              deployed(other, SLOW).migrateTenants({ concurrency: 2 }),
            ]);
            await until('both runs wait on tenant locks', async () => (await lockWaiters(tk.knex)) === 4);
          });
          return await runs;
        } finally {
          await other.close();
        }
      },
      { DB_POOL_MAX: '6' },
    );

    for (const report of reports) expect(report.totals).toMatchObject({ failed: 0, skipped: 0, total: 12 });
    expect(reports[0].totals.migrated + reports[1].totals.migrated).toBe(12);
    await expectAppliedOnce(schemas.values());
  });

  it('a tenant schema dropped while the run reads the tenants is reported failed; the run goes on', async () => {
    const ids = orgIds('drop', 3);
    const schemas = await setup(ids);
    const victim = schemas.get(ids[1]!)!;

    const report = await withTk(async (tk) => {
      const publicBefore = await tablesIn(tk.knex, 'public');
      let run: Promise<FanoutReport>;
      if (engine.multiSession) {
        // An offboarding drops the schema while the fan-out scans the tracking tables: the scan
        // saw the schema in the catalog, then waits on the dropping transaction's lock.
        await tk.knex.transaction(async (trx) => {
          await trx.raw('drop schema ?? cascade', [victim]);
          run = deployed(tk, SLOW).migrateTenants();
          run.catch(() => undefined); // awaited below; keep an early rejection from going unhandled
          await until('the run waits on the dropped tracking table', async () => (await relationWaiters(tk.knex)) > 0);
        });
      } else {
        // One session: the drop can only come before the run.
        await tk.knex.raw('drop schema ?? cascade', [victim]);
        run = deployed(tk, SLOW).migrateTenants();
      }
      const result = await run!;
      expect(await tablesIn(tk.knex, 'public')).toEqual(publicBefore);
      return result;
    });

    const outcomes = new Map(report.tenants.map((t) => [t.schema, t]));
    expect(outcomes.get(victim)).toMatchObject({ outcome: 'failed', error: { code: 'E_SCHEMA_MISSING' } });
    expect(report.totals).toMatchObject({ migrated: 2, failed: 1, total: 3 });
  });

  it('a run killed inside a tenant transaction leaves that tenant untouched, and the next run finishes the rest', async () => {
    const ids = orgIds('kill', 8);
    const schemas = await setup(ids);
    const gate = gatePath();

    // One tenant at a time: three commit, the fourth is killed with its row inserted but not committed.
    const victim = start(['migrate:tenants', '--concurrency', '1'], cliEnv({ FAN_GATE: gate, FAN_GATE_AFTER: '3' }));
    await until('the run is inside its fourth tenant', () => existsSync(`${gate}.waiting`), [victim]);
    victim.child.kill('SIGKILL');
    expect((await victim.done).signal).toBe('SIGKILL');

    const migrated = await withTk(async (tk) => {
      const done: string[] = [];
      for (const schema of schemas.values()) {
        const names = (await tracking(tk.knex, schema)).map((r) => r.name);
        const rows = await tk.knex.withSchema(schema).from('members').where({ handle: 'slow' }).pluck('handle');
        if (names.includes('008_slow_insert.ts')) {
          done.push(schema);
          expect(rows).toEqual(['slow']);
        } else {
          expect(names).toEqual([...V1]);
          expect(rows).toEqual([]);
        }
      }
      return done;
    });
    expect(migrated).toHaveLength(3);

    const rerun = await runCli(['migrate:tenants'], cliEnv());
    expect(rerun.code, rerun.stdout + rerun.stderr).toBe(0);
    expect(rerun.stdout).toMatch(/^8 tenants: 5 migrated, 3 up to date, 0 failed, 0 skipped/m);
    await expectAppliedOnce(schemas.values());
  });
});
