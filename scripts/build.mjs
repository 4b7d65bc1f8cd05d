// `pnpm build` (node --import tsx scripts/build.mjs): the package users install.
//  - dist/          the library: tsc's JavaScript, declarations and source maps (the `exports` map);
//  - dist/bin/      the CLI: one esbuild bundle of src/cli/main.ts and its light imports, with what
//                   a command runs (Knex, the toolkit, the embedded engine) in chunks loaded on demand,
//                   so that `tenant-migrate --help` parses one file instead of a tree;
//  - dist/templates the toolkit's master migrations as JavaScript, for `init` in a JavaScript project.
// Everything is built in a staging folder and then swapped in, so that a CLI started meanwhile (a
// test, `pnpm migrate:status`) finds either the old build or the new one, never half of one.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { build } from 'esbuild';
import { TOOLKIT_MASTER_MIGRATIONS } from '../src/scaffold/init.ts';

const root = path.resolve(import.meta.dirname, '..');
const dist = path.join(root, 'dist');
const staging = path.join(root, `.dist-${process.pid}`);
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
// Inlined: what every start needs (argument parsing, colours): small, and one file parses faster
// than a package's tree of modules.
const INLINED = new Set(['commander', 'picocolors']);

rmSync(staging, { recursive: true, force: true });
try {
  // Emit only (`--noCheck`): `pnpm typecheck` checks the same sources.
  const tsc = path.join(root, 'node_modules/typescript/bin/tsc');
  execFileSync(process.execPath, [tsc, '-p', 'tsconfig.build.json', '--noCheck', '--outDir', staging], {
    cwd: root,
    stdio: 'inherit',
  });
  await build({
    absWorkingDir: root,
    entryPoints: ['src/cli/main.ts'],
    outdir: path.join(staging, 'bin'),
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    sourcemap: true,
    // The inlined CommonJS packages call require(); an ES module has none of its own.
    banner: {
      js: "import { createRequire as __createRequire } from 'node:module';\nconst require = __createRequire(import.meta.url);",
    },
    // Dependencies stay packages of their own: installed once, shared with the library and with
    // users' migrations (one Knex), and loaded only by the commands that need them.
    external: Object.keys({ ...pkg.dependencies, ...pkg.devDependencies })
      .filter((name) => !INLINED.has(name))
      .flatMap((name) => [name, `${name}/*`]),
    logLevel: 'warning',
  });
  await build({
    absWorkingDir: root,
    entryPoints: TOOLKIT_MASTER_MIGRATIONS.map((name) => `master-migrations/${name}.ts`),
    outdir: path.join(staging, 'templates', 'master-migrations'),
    outExtension: { '.js': '.mjs' },
    format: 'esm',
    platform: 'node',
    target: 'node20',
    logLevel: 'warning',
  });
  const old = `${dist}.old-${process.pid}`;
  if (existsSync(dist)) renameSync(dist, old);
  renameSync(staging, dist);
  rmSync(old, { recursive: true, force: true });
} finally {
  rmSync(staging, { recursive: true, force: true });
}
