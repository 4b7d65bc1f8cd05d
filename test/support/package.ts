import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { type CliResult, finished } from './cli.ts';
import { ROOT } from './engine.ts';

/** Newest modification time under a folder. */
function newest(dir: string): number {
  let time = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const file = path.join(dir, entry.name);
    time = Math.max(time, entry.isDirectory() ? newest(file) : statSync(file).mtimeMs);
  }
  return time;
}

/** Builds the package (`pnpm build`) unless dist/ is newer than every file it is built from. */
export function ensureBuilt(): void {
  const bundle = path.join(ROOT, 'dist', 'bin', 'main.js');
  const sources = Math.max(newest(path.join(ROOT, 'src')), newest(path.join(ROOT, 'master-migrations')));
  if (existsSync(bundle) && statSync(bundle).mtimeMs >= sources) return;
  execFileSync(process.execPath, ['--import', 'tsx', 'scripts/build.mjs'], { cwd: ROOT, stdio: 'pipe' });
}

/**
 * Packs the package as `npm publish` would (`pnpm pack`) and unpacks it under `dir`; returns the
 * list of files in the tarball. `dir` sits inside the repository so that the unpacked package
 * finds its dependencies in the repository's node_modules, as it would in a user's.
 */
export function packInto(dir: string): string[] {
  mkdirSync(dir, { recursive: true });
  const out = execFileSync('pnpm', ['pack', '--pack-destination', dir], { cwd: ROOT, encoding: 'utf8' });
  const tarball = out
    .trim()
    .split('\n')
    .reverse()
    .find((line) => line.endsWith('.tgz'));
  if (!tarball) throw new Error(`pnpm pack named no tarball:\n${out}`);
  const files = execFileSync('tar', ['tzf', tarball], { encoding: 'utf8' }).trim().split('\n');
  execFileSync('tar', ['xzf', tarball, '-C', dir]);
  rmSync(tarball);
  return files.map((file) => file.replace(/^package\//, ''));
}

/** Runs `node <bin> …args` in a user's project folder, with exactly `env` on top of PATH and HOME. */
export function runBin(
  bin: string,
  args: readonly string[],
  cwd: string,
  env: Record<string, string>,
): Promise<CliResult> {
  const child = spawn(process.execPath, [bin, ...args], {
    cwd,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', NO_COLOR: '1', FORCE_COLOR: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return finished(child);
}
