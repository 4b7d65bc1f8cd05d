import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TOOLKIT_MASTER_MIGRATIONS } from '../src/scaffold/init.ts';
import { ROOT, startEngine, type TestEngine } from './support/engine.ts';
import { packInto, runBin } from './support/package.ts';

// The package as a user installs it (built by the test run's global setup): packed by `pnpm pack`, unpacked into a project's
// node_modules, run through its `bin` from the project's folder, imported through its `exports`.
const WORK = path.join(ROOT, '.scratch', `package-test-${process.env.KEEP_WORK ? 'keep' : process.pid}`);
const INSTALLED = path.join(WORK, 'node_modules', 'tenant-migrate');
const BIN = path.join(INSTALLED, 'bin', 'tenant-migrate.js');
const VERSION = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version as string;

let engine: TestEngine;
let tsEngine: TestEngine;
let packed: string[];
let db: Record<string, string>;
let tsDb: Record<string, string>;

beforeAll(async () => {
  engine = await startEngine('package');
  db = { ...engine.env, ...(engine.hasVector ? {} : { TENANT_EXTENSIONS: '' }) };
  // Each project gets a database of its own: their master folders differ.
  tsEngine = await startEngine('package-ts');
  tsDb = { ...tsEngine.env, ...(tsEngine.hasVector ? {} : { TENANT_EXTENSIONS: '' }) };
  packed = packInto(path.join(WORK, 'pack'));
  mkdirSync(path.dirname(INSTALLED), { recursive: true });
  execFileSync('cp', ['-r', path.join(WORK, 'pack', 'package'), INSTALLED]);
}, 180_000);

afterAll(async () => {
  if (!process.env.KEEP_WORK) rmSync(WORK, { recursive: true, force: true });
  await engine?.stop();
  await tsEngine?.stop();
});

function project(name: string, files: Record<string, string>): string {
  const dir = path.join(WORK, name);
  for (const [file, content] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
    writeFileSync(path.join(dir, file), content);
  }
  return dir;
}

describe('the published package', () => {
  it('holds the built library, its types, the binary and the master migrations init copies, and no sources', () => {
    for (const file of [
      'bin/tenant-migrate.js',
      'dist/index.js',
      'dist/index.d.ts',
      'dist/bin/main.js',
      '.env.example',
    ])
      expect(packed).toContain(file);
    for (const name of TOOLKIT_MASTER_MIGRATIONS) {
      expect(packed).toContain(`master-migrations/${name}.ts`);
      expect(packed).toContain(`dist/templates/master-migrations/${name}.mjs`);
    }
    expect(packed.filter((file) => /^(src|test|bench)\//.test(file))).toEqual([]);
    expect(packed.filter((file) => file.endsWith('.js.map')).length).toBeGreaterThan(0);
  });

  it('answers --version, --help and help <command>', async () => {
    const version = await runBin(BIN, ['--version'], WORK, {});
    expect(version.stdout.trim()).toBe(VERSION);
    const help = await runBin(BIN, ['--help'], WORK, {});
    expect(help.code).toBe(0);
    for (const command of ['init', 'migrate:master', 'provision:tenant', 'migrate:tenants', 'rollback:tenants'])
      expect(help.stdout).toContain(command);
    const one = await runBin(BIN, ['help', 'rollback:tenants'], WORK, {});
    expect(one.code).toBe(0);
    expect(one.stdout).toContain('--dry-run');
  });

  it('init scaffolds a JavaScript project without overwriting, and the project migrates without a TypeScript loader', async () => {
    const pkg = '{\n    "name": "js-app",\n    "type": "module",\n    "scripts": { "start": "node app.js" }\n}\n';
    const dir = project('js-app', { 'package.json': pkg });
    const dry = await runBin(BIN, ['init', '--dry-run'], dir, {});
    expect(dry.code).toBe(0);
    expect(readdirSync(dir)).toEqual(['package.json']);

    const init = await runBin(BIN, ['init', '--json'], dir, {});
    expect(init.code, init.stderr).toBe(0);
    const report = JSON.parse(init.stdout) as { language: string; steps: { path: string; action: string }[] };
    expect(report.language).toBe('js');
    expect(readdirSync(path.join(dir, 'master-migrations')).sort()).toEqual(
      TOOLKIT_MASTER_MIGRATIONS.map((name) => `${name}.mjs`),
    );
    const written = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8'));
    expect(written.name).toBe('js-app');
    expect(written.scripts.start).toBe('node app.js');
    expect(written.scripts['migrate:tenants']).toBe('tenant-migrate migrate:tenants');
    expect(readFileSync(path.join(dir, 'package.json'), 'utf8')).toContain('\n    "name"'); // its indentation kept

    // Again: everything exists, nothing is written; --force overwrites an edited file.
    writeFileSync(path.join(dir, '.env.example'), '# mine\n');
    const again = JSON.parse((await runBin(BIN, ['init', '--json'], dir, {})).stdout) as typeof report;
    expect(again.steps.every((step) => step.action === 'keep')).toBe(true);
    expect(readFileSync(path.join(dir, '.env.example'), 'utf8')).toBe('# mine\n');
    await runBin(BIN, ['init', '--force'], dir, {});
    expect(readFileSync(path.join(dir, '.env.example'), 'utf8')).toContain('DATABASE_URL');

    const master = await runBin(BIN, ['migrate:master', '--verbose'], dir, db);
    expect(master.code, master.stderr).toBe(0);
    const provision = await runBin(BIN, ['provision:tenant', 'org_js', '--verbose'], dir, db);
    expect(provision.code, provision.stderr).toBe(0);
    expect(`${master.stderr}${provision.stderr}`).not.toContain('TypeScript loader');
    const status = await runBin(BIN, ['migrate:status', '--json'], dir, db);
    const tenants = JSON.parse(status.stdout).tenants as { orgId: string; status: string; state: string }[];
    expect(tenants.map((t) => [t.orgId, t.status, t.state])).toEqual([['org_js', 'ACTIVE', 'up-to-date']]);
  }, 120_000);

  it('a TypeScript project: a typed config file, TypeScript migrations, the environment over the file', async () => {
    const dir = project('ts-app', {
      'package.json': '{ "name": "ts-app", "private": true }\n',
      'tsconfig.json': '{}\n',
      'tenant-migrate.config.ts': [
        "import { defineConfig } from 'tenant-migrate/config';",
        "const folder: string = 'db/tenant';",
        "export default defineConfig({ tenantMigrationsDir: folder, masterMigrationsDir: 'db/master' });",
        '',
      ].join('\n'),
    });
    const init = await runBin(BIN, ['init'], dir, {});
    expect(init.code, init.stderr).toBe(0);
    expect(readdirSync(path.join(dir, 'db', 'tenant'))).toEqual([expect.stringMatching(/^\d{14}_create_notes\.ts$/)]);
    expect(readdirSync(path.join(dir, 'db', 'master'))).toHaveLength(TOOLKIT_MASTER_MIGRATIONS.length);

    const master = await runBin(BIN, ['migrate:master', '--verbose'], dir, tsDb);
    expect(master.code, master.stderr).toBe(0);
    expect(master.stderr).toContain('loaded the TypeScript loader for');
    const provision = await runBin(BIN, ['provision:tenant', 'org_ts'], dir, tsDb);
    expect(provision.code, provision.stderr).toBe(0);

    // The environment wins over the file: an empty tenant folder leaves the tenant with nothing pending.
    mkdirSync(path.join(dir, 'elsewhere'));
    const status = await runBin(BIN, ['migrate:status', '--json'], dir, {
      ...tsDb,
      TENANT_MIGRATIONS_DIR: 'elsewhere',
    });
    expect(status.code, status.stderr).toBe(0);
    expect(JSON.parse(status.stdout).tenants).toEqual([
      expect.objectContaining({ orgId: 'org_ts', status: 'ACTIVE', pending: [] }),
    ]);

    // A setting the file cannot have: one line, exit 2, no stack trace.
    writeFileSync(path.join(dir, 'tenant-migrate.config.ts'), 'export default { tenantFolder: "x" };\n');
    const bad = await runBin(BIN, ['migrate:status'], dir, tsDb);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('unknown setting "tenantFolder"');
    expect(bad.stderr).not.toContain('    at ');
  }, 120_000);

  it('the library imports by its package name, and its types check in a user project', () => {
    const dir = project('lib-app', {
      'package.json': '{ "name": "lib-app", "type": "module" }\n',
      'use.mjs': "import { schemaNameFor } from 'tenant-migrate';\nconsole.log(schemaNameFor('default_tenant'));\n",
      'tsconfig.json': JSON.stringify({
        compilerOptions: {
          module: 'nodenext',
          moduleResolution: 'nodenext',
          strict: true,
          noEmit: true,
          skipLibCheck: false,
        },
        files: ['use.ts'],
      }),
      'use.ts': [
        "import { createTenantClient, provisionTenant, type ProvisionReport, type Toolkit } from 'tenant-migrate';",
        "import { defineConfig } from 'tenant-migrate/config';",
        "export const config = defineConfig({ lockTimeout: '5s', tenantExtensions: ['vector'] });",
        'export async function onSignup(orgId: string): Promise<ProvisionReport> {',
        '  return provisionTenant(orgId);',
        '}',
        'export type Used = [Toolkit, typeof createTenantClient];',
        '',
      ].join('\n'),
    });
    expect(execFileSync(process.execPath, ['use.mjs'], { cwd: dir, encoding: 'utf8' }).trim()).toBe('tid_cf4116b064');
    const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    const checked = (() => {
      try {
        return execFileSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: dir, encoding: 'utf8' });
      } catch (error) {
        return String((error as { stdout?: string }).stdout ?? error);
      }
    })();
    expect(checked).toBe('');
  }, 60_000);
});
