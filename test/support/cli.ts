import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT } from './engine.ts';

export interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

// The built CLI, as the package's binary runs it (test/support/global-setup.ts builds it when the
// sources are newer). TEST_CLI=source runs the sources through tsx instead, e.g. to debug.
const FROM_SOURCE = process.env.TEST_CLI === 'source';
const ENTRY = FROM_SOURCE ? path.join(ROOT, 'src', 'cli', 'main.ts') : path.join(ROOT, 'dist', 'bin', 'main.js');
// `--import tsx` would resolve from the child's working folder; name the loader by path instead.
const TSX = pathToFileURL(path.join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;
const NODE_ARGS = FROM_SOURCE ? ['--import', TSX, ENTRY] : [ENTRY];
// Run from an empty folder so that no developer's .env leaks into a test.
const CWD = mkdtempSync(path.join(os.tmpdir(), 'cli-cwd-'));
const SCRUBBED = [
  'DATABASE_URL',
  'DB_HOST',
  'DB_PORT',
  'DB_USER',
  'DB_PASSWORD',
  'DB_NAME',
  'DB_SSL',
  'PGLITE_DATA_DIR',
  'DEBUG',
];

/** Starts the real CLI (the built `dist/bin/main.js …`) as a child process with exactly this environment on top of PATH etc. */
export function startCli(args: readonly string[], env: Record<string, string>): ChildProcess {
  const base = Object.fromEntries(
    Object.entries(process.env).filter(
      ([k]) => !SCRUBBED.includes(k) && !k.startsWith('TENANT_') && !k.startsWith('MASTER_'),
    ),
  );
  return spawn(process.execPath, [...NODE_ARGS, ...args], {
    cwd: CWD,
    env: { ...base, FORCE_COLOR: '0', NO_COLOR: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/** Runs the CLI to completion and collects its output. */
export function runCli(args: readonly string[], env: Record<string, string>): Promise<CliResult> {
  return finished(startCli(args, env));
}

export function finished(child: ChildProcess): Promise<CliResult> {
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d) => (stdout += d));
  child.stderr?.on('data', (d) => (stderr += d));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

/** Absolute migration folders, so that the child's working folder does not matter. */
export function folders(master: string, tenant: string): Record<string, string> {
  return { MASTER_MIGRATIONS_DIR: master, TENANT_MIGRATIONS_DIR: tenant };
}
