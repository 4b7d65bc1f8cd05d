import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { configFromProject } from '../../src/config/project.ts';
import { ConfigError } from '../../src/errors.ts';

const dirs: string[] = [];
// A server is configured: on the embedded engine the pool is always one connection.
const SERVER = { DATABASE_URL: 'postgres://db.example/app' };
function folder(files: Record<string, string>): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'project-config-'));
  dirs.push(dir);
  for (const [name, content] of Object.entries(files)) writeFileSync(path.join(dir, name), content);
  return dir;
}
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe('configFromProject: defaults < config file < .env < environment', () => {
  it('reads a JSON config file, and .env and the environment win over it in that order', async () => {
    const dir = folder({
      'tenant-migrate.config.json': JSON.stringify({ lockTimeout: '7s', poolMax: 3, tenantExtensions: [] }),
    });
    expect((await configFromProject(dir, {})).lockTimeoutMs).toBe(7000);
    expect((await configFromProject(dir, {})).tenantExtensions).toEqual([]);
    writeFileSync(path.join(dir, '.env'), 'LOCK_TIMEOUT=8s\n');
    expect((await configFromProject(dir, {})).lockTimeoutMs).toBe(8000);
    expect((await configFromProject(dir, { LOCK_TIMEOUT: '9s' })).lockTimeoutMs).toBe(9000);
    // Untouched by .env or the environment: the file's value stands.
    expect((await configFromProject(dir, SERVER)).poolMax).toBe(3);
  });

  it('resolves folders against the project folder, and uses the defaults without any file', async () => {
    const dir = folder({ 'tenant-migrate.config.mjs': "export default { tenantMigrationsDir: 'db/tenant' };\n" });
    const config = await configFromProject(dir, {});
    expect(config.tenantMigrationsDir).toBe(path.join(dir, 'db', 'tenant'));
    expect(config.masterMigrationsDir).toBe(path.join(dir, 'master-migrations'));
    const bare = await configFromProject(folder({}), {});
    expect(bare.connection.kind).toBe('embedded');
    expect(bare.lockTimeoutMs).toBe(10_000);
  });

  it('reads a tenantMigrate key from a knexfile, ESM or CommonJS, and ignores a knexfile without one', async () => {
    const esm = folder({
      'knexfile.mjs': "export default { client: 'pg' };\nexport const tenantMigrate = { escapeGuard: false };\n",
    });
    expect((await configFromProject(esm, {})).escapeGuard).toBe(false);
    const cjs = folder({ 'knexfile.cjs': "module.exports = { client: 'pg', tenantMigrate: { poolMax: 4 } };\n" });
    expect((await configFromProject(cjs, SERVER)).poolMax).toBe(4);
    // Never loaded: it would throw.
    const plain = folder({ 'knexfile.mjs': "throw new Error('loaded');\n" });
    expect((await configFromProject(plain, SERVER)).poolMax).toBe(10);
  });

  it('a config file beats the knexfile, and --config (TENANT_MIGRATE_CONFIG) names another file', async () => {
    const dir = folder({
      'tenant-migrate.config.json': '{ "poolMax": 5 }',
      'other.json': '{ "poolMax": 6 }',
      'knexfile.cjs': 'module.exports = { tenantMigrate: { poolMax: 4 } };\n',
    });
    expect((await configFromProject(dir, SERVER)).poolMax).toBe(5);
    expect((await configFromProject(dir, { ...SERVER, TENANT_MIGRATE_CONFIG: 'other.json' })).poolMax).toBe(6);
  });

  it('reports every problem of the file at once, as a ConfigError', async () => {
    const dir = folder({ 'tenant-migrate.config.json': '{ "lockTimout": "5s", "poolMax": { "n": 1 } }' });
    const error = await configFromProject(dir, {}).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).problems).toEqual([
      expect.stringContaining('unknown setting "lockTimout"'),
      expect.stringContaining('"poolMax" must be a string, a number, a boolean or a list of strings'),
    ]);
    const broken = folder({ 'tenant-migrate.config.json': '{ nope' });
    await expect(configFromProject(broken, {})).rejects.toThrow(/tenant-migrate.config.json is not valid JSON/);
    await expect(configFromProject(broken, { TENANT_MIGRATE_CONFIG: 'missing.json' })).rejects.toThrow(
      /config file .*missing.json does not exist/,
    );
  });
});
