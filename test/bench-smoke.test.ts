import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT } from './support/engine.ts';
import { EXTRA_SERVER_URLS } from './support/servers.ts';

/**
 * Keeps `pnpm bench` working: a tiny run on TEST_DATABASE_URL's server when there is one
 * (timings are not asserted: benchmarks are not tests), else its refusal of the embedded engine.
 */
const CONNECTION_VARS = ['DATABASE_URL', 'DB_HOST', 'DB_PORT', 'DB_USER', 'DB_PASSWORD', 'DB_NAME'];
const VARIANTS = ['naive', 'toolkit', 'floor', 'costs', 'provision', 'big', 'report', 'startup', 'runtime', 'capacity'];
const METRICS = [
  'migrate.naive',
  'noop.naive',
  'migrate.toolkit',
  'noop.toolkit',
  'rss.migrate.toolkit',
  'cpu.migrate.toolkit',
  'startup.cli',
  'migrate.floor',
  'migrate.dryrun',
  'migrate.noguard',
  'migrate.noledger',
  'report.toolkit',
  'report.size',
  'provision.toolkit',
  'provision.floor',
  'provision.floor.booked',
  'provision.noguard',
  'migrate.toolkit.big',
  'noop.toolkit.big',
  'status.toolkit.big',
  'rss.migrate.toolkit.big',
  'startup.node',
  'startup.help',
  'startup.status',
  'runtime.raw',
  'runtime.checked',
  'runtime.roles',
  'capacity.pg_class',
  'capacity.catalog',
  'capacity.backend',
];
/** The `servers` variant's, with `--servers 3` (when the extra servers answer). */
const SERVERS_METRICS = ['servers.one', 'servers.many', 'servers.one.noop', 'servers.many.noop'];
const out = mkdtempSync(path.join(os.tmpdir(), 'bench-smoke-'));

afterAll(() => rmSync(out, { recursive: true, force: true }));

function bench(
  args: readonly string[],
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !CONNECTION_VARS.includes(k)));
  const child = spawn('pnpm', ['bench', ...args], {
    cwd: ROOT,
    env: { ...base, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const server = process.env.TEST_DATABASE_URL;

/**
 * Undefined when the servers `--servers 3` uses (BENCH_SERVER_URLS, else :5433 and :5434, which
 * `.ci/run` creates) answer; else why not, one `host:port: reason` per missing server.
 */
async function extraServersMissing(): Promise<string | undefined> {
  const given = (process.env.BENCH_SERVER_URLS ?? '')
    .split(',')
    .map((url) => url.trim())
    .filter(Boolean);
  const urls = given.length > 0 ? given.slice(0, 2) : [...EXTRA_SERVER_URLS];
  if (urls.length < 2) return 'BENCH_SERVER_URLS names fewer than 2 servers';
  const failures = await Promise.all(
    urls.map(async (url) => {
      const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3000 });
      try {
        await client.connect();
        await client.query('select 1');
        return undefined;
      } catch (error) {
        const { hostname, port } = new URL(url);
        return `${hostname}:${port || '5432'}: ${(error as Error).message}`;
      } finally {
        await client.end().catch(() => undefined);
      }
    }),
  );
  const missing = failures.filter((f) => f !== undefined);
  return missing.length > 0 ? missing.join('; ') : undefined;
}

// Registered only where a server is configured (not skipped): the refusal below runs everywhere.
if (server)
  describe('pnpm bench --smoke on a server', () => {
    it('runs every variant and writes JSON with each of them', async () => {
      // The servers variant needs two more servers: CI has them; elsewhere the smoke runs without it.
      const missing = await extraServersMissing();
      if (missing !== undefined) {
        const why = `the bench smoke's servers variant needs PostgreSQL on 127.0.0.1:5433 and :5434 (.ci/run creates them) or BENCH_SERVER_URLS: ${missing}`;
        if (process.env.CI) throw new Error(`CI needs the servers: ${why}`);
        console.warn(`skipped the servers variant: ${why}`);
      }
      const withServers = missing === undefined;
      const file = path.join(out, 'smoke.json');
      const run = await bench(['--smoke', ...(withServers ? ['--servers', '3'] : []), '--out', file], {
        DATABASE_URL: server!,
      });
      expect(run.code, run.stderr).toBe(0);
      const result = JSON.parse(readFileSync(file, 'utf8')) as {
        options: { smoke: boolean };
        runs: { variant: string }[];
        summaries: { metric: string; n: number; median: number }[];
        statements: unknown[];
      };
      expect(result.options.smoke).toBe(true);
      expect(new Set(result.runs.map((r) => r.variant))).toEqual(
        new Set([...VARIANTS, ...(withServers ? ['servers'] : [])]),
      );
      for (const metric of [...METRICS, ...(withServers ? SERVERS_METRICS : [])]) {
        const summary = result.summaries.find((s) => s.metric === metric);
        expect(summary, metric).toBeDefined();
        expect(summary!.n).toBeGreaterThan(0);
        expect(summary!.median).toBeGreaterThan(0);
      }
      expect(result.statements.length).toBeGreaterThan(5);
      expect(run.stdout).toMatch(/migrate — floor/);
      if (withServers) expect(run.stdout).toMatch(/fan-out over 3 servers: [\d.]+× (faster|slower) than one server/);
    }, 420_000);
  });

describe('pnpm bench without a server', () => {
  it('refuses the embedded engine with a clear message and exit code 2', async () => {
    // Empty values override any developer .env, leaving no server configured.
    const none = Object.fromEntries(CONNECTION_VARS.map((k) => [k, '']));
    const run = await bench(['--smoke', '--out', path.join(out, 'never.json')], none);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/needs a PostgreSQL server: set DATABASE_URL/);
    expect(run.stderr).toMatch(/will not run on the embedded engine \(PGlite\)/);
  }, 60_000);
});
