import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  type ConnectionTarget,
  type Env,
  loadConfig,
  parseDuration,
  type ToolkitConfig,
} from '../../src/config/config.ts';
import { ConfigError, UsageError } from '../../src/errors.ts';

// Pure configuration parsing: an env object in, a config or one ConfigError out. No database, no network.

const CWD = '/srv/app';
const tmp = mkdtempSync(path.join(os.tmpdir(), 'unit-config-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function server(config: ToolkitConfig): ConnectionTarget & { kind: 'server' } {
  if (config.connection.kind !== 'server') throw new Error(`expected a server target, got ${config.connection.kind}`);
  return config.connection;
}

/** The ConfigError loadConfig throws for env, or a failed expectation. */
function configError(env: Env, cwd = CWD): ConfigError {
  try {
    loadConfig(env, cwd);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error(`loadConfig accepted ${JSON.stringify(env)}`);
}

describe('parseDuration', () => {
  it.each([
    ['500ms', 500],
    ['5s', 5_000],
    ['2m', 120_000],
    ['1h', 3_600_000],
    ['0', 0],
    ['0s', 0],
    ['250', 250],
    ['1.5s', 1_500],
    [' 5s ', 5_000],
    ['5 s', 5_000],
  ])('reads %j as %i milliseconds', (raw, ms) => {
    expect(parseDuration(raw)).toBe(ms);
  });

  it.each(['', ' ', 'abc', 's', 'ms', '5x', '5sec', '5 seconds', '-1s', '+1s', '1e3', '.5s', '5s5', '1,5s'])(
    'refuses %j',
    (raw) => {
      expect(parseDuration(raw)).toBeUndefined();
    },
  );
});

describe('loadConfig: embedded default', () => {
  it('uses the embedded engine, in .pglite under the working directory, when no database variable is set', () => {
    const config = loadConfig({}, CWD);
    expect(config.connection).toEqual({ kind: 'embedded', dataDir: '/srv/app/.pglite' });
    expect(config.masterMigrationsDir).toBe('/srv/app/master-migrations');
    expect(config.tenantMigrationsDir).toBe('/srv/app/tenant-migrations');
    expect(config.tenantExtensions).toEqual(['vector']);
    expect(config.lockTimeoutMs).toBe(10_000);
    expect(config.poolMax).toBe(1);
  });

  it('keeps one connection on the embedded engine whatever DB_POOL_MAX says', () => {
    expect(loadConfig({ DB_POOL_MAX: '25' }, CWD).poolMax).toBe(1);
  });

  it('treats blank database variables as unset', () => {
    expect(loadConfig({ DATABASE_URL: '  ', DB_HOST: '', DB_PORT: '' }, CWD).connection.kind).toBe('embedded');
  });

  it('resolves PGLITE_DATA_DIR and the migration folders against the working directory', () => {
    const config = loadConfig(
      { PGLITE_DATA_DIR: 'data/pg', MASTER_MIGRATIONS_DIR: '/opt/master', TENANT_MIGRATIONS_DIR: '../tenant' },
      CWD,
    );
    expect(config.connection).toEqual({ kind: 'embedded', dataDir: '/srv/app/data/pg' });
    expect(config.masterMigrationsDir).toBe('/opt/master');
    expect(config.tenantMigrationsDir).toBe('/srv/tenant');
  });

  it('reads LOCK_TIMEOUT and TENANT_EXTENSIONS', () => {
    const config = loadConfig({ LOCK_TIMEOUT: '2m', TENANT_EXTENSIONS: ' vector , pg_trgm ,, uuid-ossp ' }, CWD);
    expect(config.lockTimeoutMs).toBe(120_000);
    expect(config.tenantExtensions).toEqual(['vector', 'pg_trgm', 'uuid-ossp']);
    expect(loadConfig({ LOCK_TIMEOUT: '0' }, CWD).lockTimeoutMs).toBe(0);
    expect(loadConfig({ TENANT_EXTENSIONS: '' }, CWD).tenantExtensions).toEqual([]);
  });
});

describe('loadConfig: DATABASE_URL', () => {
  it('takes every part of the URL, decoding escapes', () => {
    const url = 'postgres://alice:s%40cr%3At@db.example.com:6543/app%20db';
    const config = loadConfig({ DATABASE_URL: url }, CWD);
    expect(server(config)).toEqual({
      kind: 'server',
      host: 'db.example.com',
      port: 6543,
      user: 'alice',
      password: 's@cr:t',
      database: 'app db',
      describe: 'db.example.com:6543',
      connectionString: url,
      ssl: false,
    });
    expect(config.poolMax).toBe(10);
  });

  it('accepts postgresql://, defaults the port to 5432, and leaves absent parts undefined', () => {
    const target = server(loadConfig({ DATABASE_URL: 'postgresql://db.internal' }, CWD));
    expect(target.host).toBe('db.internal');
    expect(target.port).toBe(5432);
    expect(target.user).toBeUndefined();
    expect(target.password).toBeUndefined();
    expect(target.database).toBeUndefined();
    expect(target.describe).toBe('db.internal:5432');
  });

  it('takes DB_POOL_MAX for a server', () => {
    expect(loadConfig({ DATABASE_URL: 'postgres://db/app', DB_POOL_MAX: '25' }, CWD).poolMax).toBe(25);
  });

  it('turns on TLS with DB_SSL, verifying the server unless DB_SSL_REJECT_UNAUTHORIZED is false', () => {
    const url = 'postgres://db/app';
    expect(server(loadConfig({ DATABASE_URL: url, DB_SSL: 'true' }, CWD)).ssl).toEqual({ rejectUnauthorized: true });
    expect(server(loadConfig({ DATABASE_URL: url, DB_SSL: 'require' }, CWD)).ssl).toEqual({
      rejectUnauthorized: true,
    });
    expect(
      server(loadConfig({ DATABASE_URL: url, DB_SSL: '1', DB_SSL_REJECT_UNAUTHORIZED: 'false' }, CWD)).ssl,
    ).toEqual({ rejectUnauthorized: false });
    expect(server(loadConfig({ DATABASE_URL: url, DB_SSL: 'off' }, CWD)).ssl).toBe(false);
  });

  it('reads the CA certificate from DB_SSL_CERT_PATH, relative to the working directory', () => {
    const pem = '-----BEGIN CERTIFICATE-----\nunit\n-----END CERTIFICATE-----\n';
    writeFileSync(path.join(tmp, 'ca.pem'), pem);
    const target = server(loadConfig({ DATABASE_URL: 'postgres://db/app', DB_SSL_CERT_PATH: 'ca.pem' }, tmp));
    expect(target.ssl).toEqual({ ca: pem, rejectUnauthorized: true });
  });
});

describe('loadConfig: DB_* variables', () => {
  it('builds a server target from DB_HOST and friends, with postgres defaults', () => {
    const target = server(loadConfig({ DB_HOST: 'pg.internal', DB_PORT: '7000' }, CWD));
    expect(target).toEqual({
      kind: 'server',
      host: 'pg.internal',
      port: 7000,
      user: 'postgres',
      password: undefined,
      database: 'postgres',
      describe: 'pg.internal:7000',
      connectionString: undefined,
      ssl: false,
    });
  });

  it('keeps the password exactly, spaces included', () => {
    const target = server(loadConfig({ DB_USER: 'bob', DB_PASSWORD: ' pa ss ', DB_NAME: 'tenants' }, CWD));
    expect(target.host).toBe('localhost');
    expect(target.port).toBe(5432);
    expect(target.user).toBe('bob');
    expect(target.password).toBe(' pa ss ');
    expect(target.database).toBe('tenants');
  });
});

describe('loadConfig: problems', () => {
  it('reports every problem together in one ConfigError (E_CONFIG, exit code 2), each naming its variable', () => {
    const error = configError({
      DATABASE_URL: 'mysql://db/app',
      DB_SSL: 'maybe',
      DB_POOL_MAX: '0',
      LOCK_TIMEOUT: 'soon',
      TENANT_EXTENSIONS: 'vector,Bad Name',
    });
    expect(error).toBeInstanceOf(UsageError);
    expect(error.code).toBe('E_CONFIG');
    expect(error.exitCode).toBe(2);
    expect(error.problems).toHaveLength(5);
    for (const variable of ['DATABASE_URL', 'DB_SSL ', 'DB_POOL_MAX', 'LOCK_TIMEOUT', 'TENANT_EXTENSIONS']) {
      expect(error.problems.filter((p) => p.startsWith(variable))).toHaveLength(1);
    }
    expect(error.message).toBe(error.problems.join('; '));
    expect(error.problems.find((p) => p.startsWith('DATABASE_URL'))).toContain('mysql:');
    expect(error.problems.find((p) => p.startsWith('LOCK_TIMEOUT'))).toContain('"soon"');
    expect(error.problems.find((p) => p.startsWith('TENANT_EXTENSIONS'))).toContain('"Bad Name"');
  });

  it('refuses a DATABASE_URL that is not a URL', () => {
    const { problems } = configError({ DATABASE_URL: 'not a url' });
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^DATABASE_URL is not a valid URL/);
  });

  it.each(['0', '1001', '1.5', '-3', 'ten', '1e2'])('refuses DB_POOL_MAX=%j', (value) => {
    const { problems } = configError({ DATABASE_URL: 'postgres://db/app', DB_POOL_MAX: value });
    expect(problems).toEqual([expect.stringMatching(new RegExp(`^DB_POOL_MAX .*"${value.replace('.', '\\.')}"`))]);
  });

  it.each(['0', '65536', 'http'])('refuses DB_PORT=%j', (value) => {
    const { problems } = configError({ DB_HOST: 'pg.internal', DB_PORT: value });
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^DB_PORT must be a whole number between 1 and 65535/);
  });

  it('refuses a DB_SSL_CERT_PATH that does not exist', () => {
    const { problems } = configError({ DATABASE_URL: 'postgres://db/app', DB_SSL_CERT_PATH: 'missing.pem' }, tmp);
    expect(problems).toEqual([`DB_SSL_CERT_PATH: no certificate file at ${path.join(tmp, 'missing.pem')}`]);
  });

  it('refuses a bad DB_SSL_REJECT_UNAUTHORIZED', () => {
    const { problems } = configError({ DATABASE_URL: 'postgres://db/app', DB_SSL_REJECT_UNAUTHORIZED: 'sometimes' });
    expect(problems).toEqual([expect.stringMatching(/^DB_SSL_REJECT_UNAUTHORIZED must be true or false/)]);
  });

  it('checks LOCK_TIMEOUT and TENANT_EXTENSIONS on the embedded engine too', () => {
    const { problems } = configError({ LOCK_TIMEOUT: '5 minutes', TENANT_EXTENSIONS: 'vector;drop' });
    expect(problems).toHaveLength(2);
  });
});
