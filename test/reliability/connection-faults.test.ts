/**
 * Faults around one tenant's migration, and the database unreachable at start: the server
 * terminating a migration's connection, an application's lock blocking a migration. Promise
 * under test: that tenant is reported failed with a clear message and left unchanged, the others
 * migrate, the exit code is 1, and nothing is lost (the next run completes it).
 *
 * A server engine injects the faults with a second session (pg_terminate_backend, an open
 * transaction holding a lock). PGlite has one session only: there the toolkit talks to a PGlite
 * server child over TCP through a proxy that the test cuts. The database going away altogether
 * is in database-gone.test.ts.
 */
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openToolkit } from '../../src/index.ts';
import { connectTarget } from '../fixtures/rel-support/network.ts';
import {
  BASE_DIR,
  cliEnv,
  hasStack,
  MASTER_DIR,
  NEXT_DIR,
  orgIds,
  PROGRESS,
  registryRows,
  session,
  setUpTenants,
  snapshot,
  tenantArgs,
  versionOf,
  versions,
  waitFor,
  watch,
  withTkAt,
} from '../fixtures/rel-support/support.ts';
import { folders, runCli, startCli } from '../support/cli.ts';
import { startEngine, type TestEngine } from '../support/engine.ts';

const TERMINATED = orgIds('org_term', 5);
const BLOCKED = orgIds('org_block', 3);
const PROBED = orgIds('org_probe', 2);

let engine: TestEngine;

beforeAll(async () => {
  engine = await startEngine('rel_connection');
  await setUpTenants(engine, BASE_DIR, [...TERMINATED, ...BLOCKED, ...PROBED]);
});

afterAll(async () => {
  await engine?.stop();
});

describe('the connection of a migration dies', () => {
  it('that tenant is reported failed and unchanged, the pool recovers and the others migrate (exit 1)', async () => {
    const db = await connectTarget(engine, { proxy: !engine.multiSession });
    const marker = path.join(mkdtempSync(path.join(os.tmpdir(), 'rel-marker-')), 'hang');
    try {
      // One connection, one tenant at a time: the first tenant hangs in 002_notes.ts; its connection
      // is then killed, and every later tenant needs the pool to open a new one.
      const env = {
        ...cliEnv(engine, NEXT_DIR, { REL_HANG_MARKER: marker, REL_HANG_MS: engine.multiSession ? '60000' : '1500' }),
        ...db.env,
        DB_POOL_MAX: '1',
      };
      const run = watch(startCli(['migrate:tenants', '--concurrency', '1', ...tenantArgs(TERMINATED)], env));
      await waitFor(
        'a tenant to hang in 002_notes.ts',
        () => existsSync(marker) && readFileSync(marker, 'utf8') !== '',
      );
      const hung = readFileSync(marker, 'utf8');
      if (engine.multiSession) {
        const admin = await session(engine);
        try {
          let terminated = 0;
          await waitFor('the hung migration to be terminated', async () => {
            const r = await admin.query(
              `select pg_terminate_backend(pid) from pg_stat_activity
                where datname = current_database() and pid <> pg_backend_pid() and query like '%pg_sleep%'`,
            );
            terminated += r.rowCount ?? 0;
            return terminated > 0;
          });
        } finally {
          await admin.end();
        }
      } else {
        db.proxy!.cut();
      }
      const result = await run.result;
      expect(result.code).toBe(1);
      expect(result.stdout).toMatch(/5 tenants: 4 migrated, 0 up to date, 1 failed, 0 skipped/);
      const failedLine = result.stdout.split('\n').find((l) => PROGRESS.test(l) && l.includes('FAILED'));
      expect(failedLine).toContain(hung);
      expect(failedLine).toMatch(/connection|terminat/i);
      expect(hasStack(result.stdout + result.stderr)).toBe(false);

      const env2 = await db.restore();
      await withTkAt(env2, NEXT_DIR, async (tk) => {
        const states = await snapshot(tk.knex);
        for (const row of (await registryRows(tk.knex)).filter((r) => TERMINATED.includes(r.orgId))) {
          expect({ schema: row.schema, version: versionOf(states.get(row.schema)!) }).toEqual({
            schema: row.schema,
            version: row.schema === hung ? 'old' : 'new',
          });
          if (row.schema === hung) expect(row.lastMigrationError).toMatch(/connection|terminat/i);
        }
        const status = await tk.status();
        expect(status.tenants.find((t) => t.schema === hung)?.state).toBe('failed');
      });

      // Nothing lost: the next run migrates it and clears its error.
      const rerun = await runCli(['migrate:tenants', ...tenantArgs(TERMINATED)], {
        ...cliEnv(engine, NEXT_DIR),
        ...db.env,
      });
      expect(rerun.code).toBe(0);
      expect(rerun.stdout).toMatch(/5 tenants: 1 migrated, 4 up to date, 0 failed/);
      expect(Object.values(await versions(await db.restore(), TERMINATED))).toEqual(TERMINATED.map(() => 'new'));
    } finally {
      await db.close();
    }
  });
});

describe('lock_timeout', () => {
  it('--lock-timeout reaches every migration transaction, with the tenant schema first on the path', async () => {
    const probeDir = path.join(path.dirname(BASE_DIR), 'rel-probe');
    const result = await runCli(
      ['migrate:tenants', '--lock-timeout', '1s', ...tenantArgs(PROBED)],
      cliEnv(engine, probeDir),
    );
    expect(result.stderr).toEqual(
      engine.multiSession ? '' : expect.stringMatching(/^Using the embedded PostgreSQL[^\n]*\n$/),
    );
    expect(result.code).toBe(0);
    await withTkAt(engine.env, probeDir, async (tk) => {
      for (const row of (await registryRows(tk.knex)).filter((r) => PROBED.includes(r.orgId))) {
        const probe = await tk.knex.withSchema(row.schema).from('probe').first();
        expect(probe).toEqual({ lock_timeout: '1s', search_path: `"${row.schema}", public`, schema: row.schema });
      }
    });
  });

  it("a migration blocked by an application's lock gives up after --lock-timeout; the others migrate", async () => {
    if (!engine.multiSession) {
      // On PGlite the application and the migration cannot share the database at all: while the
      // application has it open, the CLI must give up at once with a clear message, not wait.
      const app = await openToolkit({
        ...engine.config({ ...folders(MASTER_DIR, BASE_DIR), TENANT_EXTENSIONS: '' }),
      });
      try {
        const before = await snapshot(app.knex);
        const result = await runCli(
          ['migrate:tenants', '--lock-timeout', '1s', ...tenantArgs(BLOCKED)],
          cliEnv(engine, NEXT_DIR),
        );
        expect(result.code).toBe(1);
        expect(result.stderr).toMatch(
          new RegExp(
            `^error: The embedded database at \\S+ is in use by another process \\(pid ${process.pid}\\)`,
            'm',
          ),
        );
        expect(result.stderr.split('\n').filter((l) => l.startsWith('error:'))).toHaveLength(1);
        expect(hasStack(result.stderr)).toBe(false);
        expect(await snapshot(app.knex)).toEqual(before);
      } finally {
        await app.close();
      }
      return;
    }
    const app = await session(engine);
    try {
      const blockedSchema = (
        await app.query('select schema_name from public.tenants where clerk_org_id = $1', [BLOCKED[1]])
      ).rows[0].schema_name;
      // An application transaction that read the table and has not finished: 002's ALTER TABLE needs an exclusive lock.
      await app.query('begin');
      await app.query(`select count(*) from "${blockedSchema}".items`);
      const result = await runCli(
        ['migrate:tenants', '--lock-timeout', '1s', ...tenantArgs(BLOCKED)],
        cliEnv(engine, NEXT_DIR),
      );
      await app.query('rollback');
      expect(result.code).toBe(1);
      expect(result.stdout).toMatch(/3 tenants: 2 migrated, 0 up to date, 1 failed, 0 skipped/);
      expect(result.stdout).toMatch(
        new RegExp(`${BLOCKED[1]} \\(${blockedSchema}\\): 002_notes\\.ts \\(up\\) failed: .*lock timeout`),
      );
      expect(await versions(engine.env, BLOCKED)).toEqual({
        [BLOCKED[0]!]: 'new',
        [BLOCKED[1]!]: 'old',
        [BLOCKED[2]!]: 'new',
      });
    } finally {
      await app.end();
    }
  });
});

describe('the database is unreachable', () => {
  it('at start: one line naming host:port, exit 1, no stack', async () => {
    const port = await closedPort();
    const env = {
      ...cliEnv(engine, NEXT_DIR),
      DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/app`,
      PGLITE_DATA_DIR: '',
    };
    for (const args of [['migrate:tenants'], ['provision:tenant', 'org_unreachable'], ['migrate:status']]) {
      const result = await runCli(args, env);
      expect({ args, code: result.code, stdout: result.stdout, stderr: result.stderr }).toEqual({
        args,
        code: 1,
        stdout: '',
        stderr: `error: Cannot connect to PostgreSQL at 127.0.0.1:${port}: ECONNREFUSED\n`,
      });
    }
    const split = {
      ...cliEnv(engine, NEXT_DIR),
      DATABASE_URL: '',
      DB_HOST: '127.0.0.1',
      DB_PORT: String(port),
      PGLITE_DATA_DIR: '',
    };
    const result = await runCli(['migrate:tenants'], split);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(`error: Cannot connect to PostgreSQL at 127.0.0.1:${port}: ECONNREFUSED\n`);
  });
});

/** A loopback port nobody listens on. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}
