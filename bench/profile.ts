/**
 * `tsx bench/profile.ts [--tenants N] [--provisions N]`: where the toolkit's time goes. Counts
 * and times every round trip of an in-process `migrateTenants` (first run and no-op rerun) and
 * of `provisionTenant`, grouped by statement shape, and splits a CLI command's start-up from
 * its work. Not a benchmark: the figures explain the benchmark's.
 */
import { parseArgs } from 'node:util';
import type { Knex } from 'knex';
import { openToolkit } from '../src/toolkit.ts';
import { captureMigrationSql } from './capture.ts';
import { runCommand } from './cli.ts';
import { benchOverrides, migrateMaster, seedFleet } from './seed.ts';
import { openServer, withFreshDatabase } from './server.ts';
import { floorRun } from './variants/floor.ts';
import { toolkitEnv } from './variants/toolkit.ts';

interface Shape {
  count: number;
  ms: number;
}

/**
 * Records every query's shape (schema names and literals folded) and its time on the wire,
 * keyed by connection (one query at a time each). BEGIN and COMMIT send no response event:
 * they end when the next query on their connection starts.
 */
function tally(knex: Knex): { shapes: Map<string, Shape>; reset(): void } {
  const shapes = new Map<string, Shape>();
  const started = new Map<string, { shape: string; at: number }>();
  const shapeOf = (sql: string): string =>
    sql
      .replace(/"tid_[0-9a-z_]+"/g, '"tid_…"')
      .replace(/'[^']*'/g, "'…'")
      .replace(/\s+/g, ' ')
      .slice(0, 110);
  const finish = (connection: string): void => {
    const s = started.get(connection);
    if (!s) return;
    started.delete(connection);
    const entry = shapes.get(s.shape) ?? { count: 0, ms: 0 };
    entry.count++;
    entry.ms += performance.now() - s.at;
    shapes.set(s.shape, entry);
  };
  knex.on('query', (q: { __knexUid: string; sql: string }) => {
    finish(q.__knexUid);
    started.set(q.__knexUid, { shape: shapeOf(q.sql), at: performance.now() });
  });
  knex.on('query-response', (_: unknown, q: { __knexUid: string }) => finish(q.__knexUid));
  knex.on('query-error', (_: unknown, q: { __knexUid: string }) => finish(q.__knexUid));
  return { shapes, reset: () => shapes.clear() };
}

/** Wall and client CPU time of `cb`. */
async function clock<T>(cb: () => Promise<T>): Promise<{ result: T; wallMs: number; cpuMs: number }> {
  const cpu = process.cpuUsage();
  const started = performance.now();
  const result = await cb();
  const used = process.cpuUsage(cpu);
  return { result, wallMs: performance.now() - started, cpuMs: (used.user + used.system) / 1000 };
}

function print(
  title: string,
  time: { wallMs: number; cpuMs: number },
  units: number,
  shapes: Map<string, Shape>,
): void {
  const total = [...shapes.values()].reduce((a, s) => ({ count: a.count + s.count, ms: a.ms + s.ms }), {
    count: 0,
    ms: 0,
  });
  console.log(
    `\n${title}: ${time.wallMs.toFixed(0)} ms wall, ${time.cpuMs.toFixed(0)} ms client CPU (${(time.cpuMs / units).toFixed(2)} per tenant), ` +
      `${total.count} round trips (${(total.count / units).toFixed(1)} per tenant), ${total.ms.toFixed(0)} ms summed on the wire`,
  );
  for (const [shape, s] of [...shapes.entries()].sort((a, b) => b[1].ms - a[1].ms).slice(0, 25)) {
    console.log(`  ${String(s.count).padStart(6)} × ${(s.ms / s.count).toFixed(2).padStart(7)} ms  ${shape}`);
  }
}

const { values } = parseArgs({
  options: { tenants: { type: 'string', default: '200' }, provisions: { type: 'string', default: '50' } },
});
const tenants = Number(values.tenants);
const provisions = Number(values.provisions);
const server = await openServer(process.env);
try {
  await withFreshDatabase(server, 'profile', async (database) => {
    await seedFleet(server, database, tenants);
    const toolkit = await openToolkit(server.configFor(database, benchOverrides()));
    const t = tally(toolkit.knex);
    try {
      for (const label of ['migrateTenants (first run)', 'migrateTenants (no-op rerun)']) {
        t.reset();
        const time = await clock(() => toolkit.migrateTenants());
        print(`${label}, ${tenants} tenants, ${time.result.totals.migrated} migrated`, time, tenants, t.shapes);
      }
    } finally {
      await toolkit.close();
    }
    const env = toolkitEnv(server, database);
    const help = await runCommand(['--help'], env);
    const noop = await runCommand(['migrate:tenants'], env);
    const status = await runCommand(['migrate:status'], env);
    console.log(
      `\nwhole commands: --help ${help.ms.toFixed(0)} ms (start-up: node, tsx, every module), no-op migrate:tenants ${noop.ms.toFixed(0)} ms, migrate:status ${status.ms.toFixed(0)} ms; peak RSS of --help ${((help.maxRssKb ?? 0) / 1024).toFixed(0)} MB`,
    );
  });
  await withFreshDatabase(server, 'profloor', async (database) => {
    const statements = await captureMigrationSql(server, database);
    await seedFleet(server, database, tenants);
    const time = await clock(() => floorRun(server, database, statements, server.poolMax));
    console.log(
      `\nfloor, ${tenants} tenants: ${time.wallMs.toFixed(0)} ms wall, ${time.cpuMs.toFixed(0)} ms client CPU (${(time.cpuMs / tenants).toFixed(2)} per tenant), ${statements.length + 3} round trips per tenant`,
    );
  });
  await withFreshDatabase(server, 'profprov', async (database) => {
    await migrateMaster(server, database);
    const toolkit = await openToolkit(server.configFor(database, benchOverrides()));
    const t = tally(toolkit.knex);
    try {
      await toolkit.provisionTenant('org_warmup');
      t.reset();
      const time = await clock(async () => {
        for (let i = 0; i < provisions; i++) await toolkit.provisionTenant(`org_profile_${i}`);
      });
      print(`provisionTenant × ${provisions}`, time, provisions, t.shapes);
    } finally {
      await toolkit.close();
    }
  });
} finally {
  await server.close();
}
