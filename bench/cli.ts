import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ensureBuilt } from '../test/support/package.ts';
import { ROOT } from './server.ts';
import type { Measurement } from './variants/types.ts';

/** One whole CLI command: wall time from spawn to exit, and the child's peak RSS and CPU time. */
export interface CommandRun {
  readonly ms: number;
  readonly maxRssKb: number | null;
  readonly cpuMs: number | null;
  readonly stdoutTail: string;
}

/** The built CLI, as the package's `tenant-migrate` binary runs it (rebuilt first when the sources are newer). */
const ENTRY = path.join(ROOT, 'dist', 'bin', 'main.js');
const USAGE = pathToFileURL(path.join(ROOT, 'bench', 'child-usage.mjs')).href;
let built = false;
/** As `args[0]`: run `node -e 0` instead of the CLI, the start-up every Node program pays. */
export const NODE_ONLY = '--node-only';
/** A deploy that takes longer than this is a hang, not a measurement. */
const TIMEOUT_MS = 30 * 60_000;
/** Variables of the user's shell that must not reach the child: the bench names its database and folders itself. */
const SCRUBBED = /^(DATABASE_URL|DB_.*|TENANT_.*|MASTER_.*|LOCK_TIMEOUT|ESCAPE_GUARD|LEDGER_.*|PGLITE_DATA_DIR|DEBUG)$/;

/**
 * Runs the built CLI with `args` as users do (`npx tenant-migrate migrate:tenants`, without
 * npx's or pnpm's own start-up), timed from spawn to exit. The child runs in
 * an empty folder so that no `.env` leaks in, with exactly `env` for its configuration.
 * Output is read and dropped (its last lines are kept for error messages). Throws on a
 * non-zero exit.
 */
export async function runCommand(args: readonly string[], env: Record<string, string>): Promise<CommandRun> {
  if (!built) {
    ensureBuilt();
    built = true;
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-cli-'));
  const usageFile = path.join(dir, 'usage.json');
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !SCRUBBED.test(k)));
  try {
    const started = performance.now();
    const child = spawn(
      process.execPath,
      ['--import', USAGE, ...(args[0] === NODE_ONLY ? ['-e', '0'] : [ENTRY, ...args])],
      {
        cwd: dir,
        env: { ...base, NO_COLOR: '1', FORCE_COLOR: '0', ...env, BENCH_USAGE_FILE: usageFile },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let tail = '';
    const keep = (chunk: Buffer): void => {
      tail = (tail + chunk.toString()).slice(-4000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    const timer = setTimeout(() => child.kill('SIGKILL'), TIMEOUT_MS);
    const code = await new Promise<number | null>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (c) => resolve(c));
    });
    clearTimeout(timer);
    const ms = performance.now() - started;
    if (code !== 0) throw new Error(`${args.join(' ')} exited with ${code}:\n${tail}`);
    let usage: { maxRssKb: number; cpuMs: number } | undefined;
    try {
      usage = JSON.parse(readFileSync(usageFile, 'utf8'));
    } catch {
      // No file: the child died before its exit handler; the time still stands.
    }
    return { ms, maxRssKb: usage?.maxRssKb ?? null, cpuMs: usage?.cpuMs ?? null, stdoutTail: tail };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Measurements of whole commands: wall time as `metric`, the child's CPU time as
 * `cpu.<metric>`, and with `rss` its peak RSS as `rss.<metric>`.
 */
export function commandMeasurements(
  metric: string,
  tenants: number,
  runs: readonly CommandRun[],
  options: { rss?: boolean } = {},
): Measurement[] {
  const present = (values: readonly (number | null)[]): number[] => values.filter((v): v is number => v !== null);
  const out: Measurement[] = [{ metric, unit: 'ms', tenants, values: runs.map((r) => r.ms) }];
  const cpu = present(runs.map((r) => r.cpuMs));
  if (cpu.length > 0) out.push({ metric: `cpu.${metric}`, unit: 'ms', tenants, values: cpu });
  const rss = present(runs.map((r) => r.maxRssKb));
  if (options.rss && rss.length > 0) out.push({ metric: `rss.${metric}`, unit: 'kB', tenants, values: rss });
  return out;
}
