/**
 * `pnpm bench`: the toolkit against the naive per-tenant Knex loop and the raw-SQL floor, on
 * the configured PostgreSQL server (DATABASE_URL or DB_*), each variant on its own fresh
 * database, variants interleaved and repeated; prints a table and writes bench/results/latest.json.
 */
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import dotenv from 'dotenv';
import pg from 'pg';
import { captureMigrationSql } from './capture.ts';
import { checkTargets, formatValue, renderTable, summarise, writeJson } from './report.ts';
import { EmbeddedRefusedError, live, openServer, ROOT, type Server, withFreshDatabase } from './server.ts';
import { big } from './variants/big.ts';
import { capacity } from './variants/capacity.ts';
import { costs } from './variants/costs.ts';
import { floor } from './variants/floor.ts';
import { naive } from './variants/naive.ts';
import { provision, provisionFloor } from './variants/provision.ts';
import { report } from './variants/report.ts';
import { runtime } from './variants/runtime.ts';
import { startup } from './variants/startup.ts';
import { toolkit } from './variants/toolkit.ts';
import type { BenchContext, Measurement, Variant } from './variants/types.ts';

/** Interleaved and repeated, in this order rotated by one each round. */
const ROUND: readonly Variant[] = [naive, toolkit, floor, costs, provision, provisionFloor];
/** Built once (it is the large fleet); repeats happen inside it. */
const ONCE: readonly Variant[] = [big, report, startup, runtime, capacity];
const ALL = [...ROUND, ...ONCE];

const USAGE = `Usage: pnpm bench [--tenants N] [--big N] [--repeat R] [--provisions N] [--only ${ALL.map((v) => v.name).join(',')}] [--smoke] [--out FILE]

  --tenants N     fleet size for the naive / toolkit / floor comparison (default 1000)
  --big N         fleet size for the no-op rerun, migrate:status and peak RSS (default 10000)
  --repeat R      rounds of the interleaved variants, and reruns inside "big" (default 3)
  --provisions N  tenants provisioned one by one for the provisioning latency (default 100)
  --only a,b      run only these variants
  --smoke         tiny sizes (20 tenants, big 50, 1 round, 10 provisions): checks the bench works
  --out FILE      JSON output (default bench/results/latest.json)

Needs a PostgreSQL server (DATABASE_URL or DB_*) and a role that may CREATE DATABASE.`;

interface Options {
  readonly tenants: number;
  readonly big: number;
  readonly repeat: number;
  readonly provisions: number;
  readonly variants: readonly Variant[];
  readonly smoke: boolean;
  readonly out: string;
}

function parseOptions(argv: readonly string[]): Options {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      tenants: { type: 'string' },
      big: { type: 'string' },
      repeat: { type: 'string' },
      provisions: { type: 'string' },
      only: { type: 'string' },
      smoke: { type: 'boolean', default: false },
      out: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const smoke = values.smoke ?? false;
  const only = values.only
    ?.split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const unknown = only?.filter((name) => !ALL.some((v) => v.name === name)) ?? [];
  if (unknown.length > 0)
    throw new UsageError(`--only: unknown variant ${unknown.join(', ')} (known: ${ALL.map((v) => v.name).join(', ')})`);
  return {
    tenants: count('--tenants', values.tenants, smoke ? 20 : 1000),
    big: count('--big', values.big, smoke ? 50 : 10_000),
    repeat: count('--repeat', values.repeat, smoke ? 1 : 3),
    provisions: count('--provisions', values.provisions, smoke ? 10 : 100),
    variants: only ? ALL.filter((v) => only.includes(v.name)) : ALL,
    smoke,
    out: path.resolve(values.out ?? path.join(ROOT, 'bench', 'results', 'latest.json')),
  };
}

class UsageError extends Error {}

function count(flag: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < 1)
    throw new UsageError(`${flag} must be a whole number of at least 1, got "${raw}"`);
  return Number(raw);
}

/** The environment as the CLI sees it: `.env` in the working folder, under the real environment. */
function environment(): Record<string, string | undefined> {
  const file = path.join(process.cwd(), '.env');
  const fromFile = existsSync(file) ? dotenv.parse(readFileSync(file, 'utf8')) : {};
  return { ...fromFile, ...process.env };
}

const log = (line: string): void => void process.stderr.write(`${line}\n`);

async function main(): Promise<number> {
  let options: Options;
  let server: Server;
  try {
    options = parseOptions(process.argv.slice(2));
    server = await openServer(environment());
  } catch (error) {
    if (
      error instanceof EmbeddedRefusedError ||
      error instanceof UsageError ||
      (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')
    ) {
      log(`bench: ${(error as Error).message}`);
      if (!(error instanceof EmbeddedRefusedError)) log(USAGE);
      return 2;
    }
    throw error;
  }
  onInterrupt(server);
  const startedAt = new Date();
  const loadBefore = os.loadavg();
  try {
    const statements = await withFreshDatabase(server, 'capture', (db) => captureMigrationSql(server, db));
    const ctx: BenchContext = {
      server,
      tenants: options.tenants,
      big: options.big,
      repeat: options.repeat,
      provisions: options.provisions,
      statements,
      log,
    };
    log(
      `bench on ${server.describe} (PostgreSQL ${await server.version()}): ${options.tenants} tenants, big ${options.big}, ${options.repeat} round(s), pool ${server.poolMax}, ${statements.length} statements per tenant`,
    );
    const runs: { variant: string; round: number | null; measurements: Measurement[] }[] = [];
    const round = ROUND.filter((v) => options.variants.includes(v));
    for (let r = 0; r < options.repeat; r++) {
      for (let i = 0; i < round.length; i++) {
        const variant = round[(i + r) % round.length]!;
        runs.push({
          variant: variant.name,
          round: r + 1,
          measurements: await timed(variant, ctx, `round ${r + 1}/${options.repeat}`),
        });
      }
    }
    for (const variant of ONCE.filter((v) => options.variants.includes(v))) {
      runs.push({ variant: variant.name, round: null, measurements: await timed(variant, ctx, 'once') });
    }

    const summaries = summarise(runs.flatMap((run) => run.measurements));
    const checks = checkTargets(summaries);
    process.stdout.write(`\n${renderTable(summaries, checks)}\n`);
    const file = writeJson(options.out, {
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      server: { describe: server.describe, version: await server.version() },
      machine: {
        node: process.version,
        platform: `${os.platform()} ${os.release()}`,
        cpus: os.cpus().length,
        cpuModel: os.cpus()[0]?.model ?? null,
        memoryMb: Math.round(os.totalmem() / 2 ** 20),
        loadavgBefore: loadBefore,
        loadavgAfter: os.loadavg(),
      },
      options: {
        tenants: options.tenants,
        big: options.big,
        repeat: options.repeat,
        provisions: options.provisions,
        smoke: options.smoke,
        poolMax: server.poolMax,
        variants: options.variants.map((v) => v.name),
      },
      variants: options.variants.map((v) => ({ name: v.name, description: v.description })),
      statements,
      summaries,
      runs,
      targets: checks,
    });
    log(
      `\nwrote ${path.relative(process.cwd(), file) || file}; load average ${loadBefore.map((l) => l.toFixed(2)).join(' ')} → ${os
        .loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')} (high load means noisy figures)`,
    );
    return 0;
  } finally {
    await server.close();
  }
}

async function timed(variant: Variant, ctx: BenchContext, when: string): Promise<Measurement[]> {
  const started = performance.now();
  const result = await variant.run(ctx);
  const brief = result
    .map(
      (m) =>
        `${m.metric}=${m.values
          .map((v) => formatValue(v, m.unit))
          .slice(0, 3)
          .join(', ')}${m.values.length > 3 ? ` … (${m.values.length})` : ''}`,
    )
    .join('; ');
  log(`[${when}] ${variant.name} (${((performance.now() - started) / 1000).toFixed(1)} s with setup): ${brief}`);
  return result;
}

/** Ctrl-C drops the databases this run created, then exits. */
function onInterrupt(server: Server): void {
  process.once('SIGINT', () => {
    log('\ninterrupted: dropping this run’s bench databases');
    void (async () => {
      const admin = await server.client(server.adminDatabase).catch(() => undefined);
      for (const db of live)
        await admin?.query(`drop database if exists ${pg.escapeIdentifier(db)} with (force)`).catch(() => undefined);
      await admin?.end().catch(() => undefined);
      process.exit(130);
    })();
  });
}

process.exitCode = await main();
