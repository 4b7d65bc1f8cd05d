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
import { checkTargets, formatValue, renderTable, serversContext, summarise, writeJson } from './report.ts';
import { EmbeddedRefusedError, live, openServer, ROOT, type Server, withFreshDatabase } from './server.ts';
import { big } from './variants/big.ts';
import { capacity } from './variants/capacity.ts';
import { costs } from './variants/costs.ts';
import { floor } from './variants/floor.ts';
import { naive } from './variants/naive.ts';
import { provision } from './variants/provision.ts';
import { report } from './variants/report.ts';
import { runtime } from './variants/runtime.ts';
import { extraServerUrls, openExtraServers, ServersUnavailableError, servers } from './variants/servers.ts';
import { startup } from './variants/startup.ts';
import { toolkit } from './variants/toolkit.ts';
import type { BenchContext, Measurement, Variant } from './variants/types.ts';

/** Interleaved and repeated, in this order rotated by one each round. */
const ROUND: readonly Variant[] = [naive, toolkit, floor, costs, provision];
/** Built once (it is the large fleet); repeats happen inside it. */
const ONCE: readonly Variant[] = [big, report, startup, runtime, capacity];
const ALL = [...ROUND, ...ONCE];
/** Run only when asked (`--servers N` or `--only servers`): it needs servers beside the main one. */
const SERVERS = 'servers';
const KNOWN = [...ALL.map((v) => v.name), SERVERS];
/** Servers of the `servers` variant under `--only servers` without `--servers`. */
const DEFAULT_SERVERS = 3;

const USAGE = `Usage: pnpm bench [--tenants N] [--big N] [--repeat R] [--provisions N] [--servers N] [--only ${KNOWN.join(',')}] [--smoke] [--out FILE]

  --tenants N     fleet size for the naive / toolkit / floor comparison (default 1000)
  --big N         fleet size for the no-op rerun, migrate:status and peak RSS (default 10000)
  --repeat R      rounds of the interleaved variants, and reruns inside "big" (default 3)
  --provisions N  tenants provisioned one by one for the provisioning latency (default 100)
  --servers N     also the "servers" variant: migrate:tenants with the tenants spread over N servers (N >= 2)
                  against all on one, same pool per server; the extra servers are BENCH_SERVER_URLS (admin
                  URLs, comma-separated), default 127.0.0.1:5433 and :5434 (--only servers: N defaults to 3)
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
  /** Servers of the `servers` variant (main included); null when it does not run. */
  readonly servers: number | null;
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
      servers: { type: 'string' },
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
  const unknown = only?.filter((name) => !KNOWN.includes(name)) ?? [];
  if (unknown.length > 0)
    throw new UsageError(`--only: unknown variant ${unknown.join(', ')} (known: ${KNOWN.join(', ')})`);
  const serverCount =
    values.servers !== undefined
      ? count('--servers', values.servers, DEFAULT_SERVERS)
      : only?.includes(SERVERS)
        ? DEFAULT_SERVERS
        : null;
  if (serverCount !== null && serverCount < 2)
    throw new UsageError(`--servers must be at least 2 (the main server and one more), got ${serverCount}`);
  return {
    tenants: count('--tenants', values.tenants, smoke ? 20 : 1000),
    big: count('--big', values.big, smoke ? 50 : 10_000),
    repeat: count('--repeat', values.repeat, smoke ? 1 : 3),
    provisions: count('--provisions', values.provisions, smoke ? 10 : 100),
    variants: only ? ALL.filter((v) => only.includes(v.name)) : ALL,
    servers: serverCount,
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
  let extras: Server[] = [];
  try {
    options = parseOptions(process.argv.slice(2));
    const env = environment();
    server = await openServer(env);
    if (options.servers !== null) {
      try {
        extras = await openExtraServers(server, extraServerUrls(env, server, options.servers - 1));
      } catch (error) {
        // The main connection is open: left so, it would keep the process alive.
        await server.close();
        throw error;
      }
    }
  } catch (error) {
    if (
      error instanceof EmbeddedRefusedError ||
      error instanceof ServersUnavailableError ||
      error instanceof UsageError ||
      (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')
    ) {
      log(`bench: ${(error as Error).message}`);
      if (error instanceof UsageError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) log(USAGE);
      return 2;
    }
    throw error;
  }
  const variants = [...options.variants, ...(extras.length > 0 ? [servers(extras)] : [])];
  onInterrupt();
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
      `bench on ${server.describe} (PostgreSQL ${await server.version()}): ${options.tenants} tenants, big ${options.big}, ${options.repeat} round(s), pool ${server.poolMax}, ${statements.length} statements per tenant${extras.length > 0 ? `; servers variant: main and ${extras.map((x) => x.describe).join(', ')}` : ''}`,
    );
    const runs: { variant: string; round: number | null; measurements: Measurement[] }[] = [];
    const round = ROUND.filter((v) => variants.includes(v));
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
    const once = [...ONCE.filter((v) => variants.includes(v)), ...variants.filter((v) => v.name === SERVERS)];
    for (const variant of once) {
      runs.push({ variant: variant.name, round: null, measurements: await timed(variant, ctx, 'once') });
    }

    const summaries = summarise(runs.flatMap((run) => run.measurements));
    const checks = checkTargets(summaries);
    const context =
      options.servers === null
        ? []
        : serversContext(summaries, {
            servers: options.servers,
            poolMax: server.poolMax,
            cores: os.cpus().length,
            sameMachine: [server, ...extras].every((s) => isLoopback(s.host)),
          });
    process.stdout.write(`\n${renderTable(summaries, checks, context)}\n`);
    const file = writeJson(options.out, {
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      server: { describe: server.describe, version: await server.version() },
      extraServers: extras.map((x) => x.describe),
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
        servers: options.servers,
        variants: variants.map((v) => v.name),
      },
      variants: variants.map((v) => ({ name: v.name, description: v.description })),
      statements,
      summaries,
      runs,
      targets: checks,
      context,
    });
    log(
      `\nwrote ${path.relative(process.cwd(), file) || file}; load average ${loadBefore.map((l) => l.toFixed(2)).join(' ')} → ${os
        .loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')} (high load means noisy figures)`,
    );
    return 0;
  } finally {
    await Promise.all([server, ...extras].map((s) => s.close()));
  }
}

/** Whether a host is this machine (then the servers share its cores with each other and with the bench). */
function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host === '[::1]' || host.startsWith('127.') || host.startsWith('/');
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

/** Ctrl-C drops the databases this run created (on every server), then exits. */
function onInterrupt(): void {
  process.once('SIGINT', () => {
    log('\ninterrupted: dropping this run’s bench databases');
    void (async () => {
      for (const [db, server] of live) {
        // A connection of its own: the admin connection may be busy with what was interrupted.
        const admin = await server.client(server.adminDatabase).catch(() => undefined);
        await admin?.query(`drop database if exists ${pg.escapeIdentifier(db)} with (force)`).catch(() => undefined);
        await admin?.end().catch(() => undefined);
      }
      process.exit(130);
    })();
  });
}

process.exitCode = await main();
