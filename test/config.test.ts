import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { knexConfigFor } from '../src/db/connection.ts';
import { startEmbedded } from '../src/db/embedded.ts';
import {
  ConfigError,
  ConnectionError,
  type ConnectionTarget,
  loadConfig,
  openToolkit,
  type ToolkitConfig,
  UsageError,
} from '../src/index.ts';
import { type CliResult, runCli } from './support/cli.ts';
import { ROOT, startEngine, type TestEngine } from './support/engine.ts';

/*
 * Configuration: the pure `loadConfig(env, cwd)` first, then what reaches the driver, then what
 * the CLI prints for bad configuration and for a server it cannot reach.
 */

const CWD = '/srv/app';
const tmp = mkdtempSync(path.join(os.tmpdir(), 'config-test-'));

afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function server(config: ToolkitConfig): ConnectionTarget & { kind: 'server' } {
  expect(config.connection.kind).toBe('server');
  return config.connection as ConnectionTarget & { kind: 'server' };
}

/** The ConfigError that `loadConfig` throws for env, or a failed expectation. */
function problemsOf(env: Record<string, string>, cwd = CWD): readonly string[] {
  try {
    loadConfig(env, cwd);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    expect(error).toBeInstanceOf(UsageError);
    expect((error as ConfigError).exitCode).toBe(2);
    return (error as ConfigError).problems;
  }
  throw new Error(`loadConfig accepted ${JSON.stringify(env)}`);
}

describe('loadConfig: DATABASE_URL', () => {
  it('takes host, port, user, password and database from the URL, percent-decoded', () => {
    const url = 'postgres://app%20user:p%40ss%3Aw0rd@db.example.com:6543/my%2Ddb';
    const target = server(loadConfig({ DATABASE_URL: url }, CWD));
    expect(target).toMatchObject({
      host: 'db.example.com',
      port: 6543,
      user: 'app user',
      password: 'p@ss:w0rd',
      database: 'my-db',
      describe: 'db.example.com:6543',
      connectionString: url,
      ssl: false,
    });
  });

  it('defaults the port to 5432, accepts postgresql://, and leaves out what the URL leaves out', () => {
    const target = server(loadConfig({ DATABASE_URL: 'postgresql://localhost' }, CWD));
    expect(target).toMatchObject({
      host: 'localhost',
      port: 5432,
      user: undefined,
      password: undefined,
      database: undefined,
      describe: 'localhost:5432',
    });
  });

  it('wins over DB_* variables when both are set', () => {
    const target = server(
      loadConfig(
        { DATABASE_URL: 'postgres://u@url-host:7000/urldb', DB_HOST: 'var-host', DB_PORT: '7001', DB_NAME: 'vardb' },
        CWD,
      ),
    );
    expect(target).toMatchObject({ host: 'url-host', port: 7000, database: 'urldb' });
  });

  it('rejects a URL that does not parse, and one of another scheme, naming DATABASE_URL', () => {
    expect(problemsOf({ DATABASE_URL: 'not a url' })).toEqual([
      expect.stringMatching(/^DATABASE_URL is not a valid URL/),
    ]);
    expect(problemsOf({ DATABASE_URL: 'mysql://root@db:3306/app' })).toEqual([
      expect.stringMatching(/^DATABASE_URL must start with postgres:\/\/.*mysql:/),
    ]);
  });
});

describe('loadConfig: DB_HOST, DB_PORT, DB_USER, DB_PASSWORD, DB_NAME', () => {
  it('builds the target from the separate variables', () => {
    const target = server(
      loadConfig(
        {
          DB_HOST: 'db.internal',
          DB_PORT: '6000',
          DB_USER: 'svc',
          DB_PASSWORD: ' secret with spaces ',
          DB_NAME: 'coach',
        },
        CWD,
      ),
    );
    expect(target).toMatchObject({
      host: 'db.internal',
      port: 6000,
      user: 'svc',
      // A password is taken verbatim: spaces can be part of it.
      password: ' secret with spaces ',
      database: 'coach',
      describe: 'db.internal:6000',
      connectionString: undefined,
      ssl: false,
    });
  });

  it('fills in localhost:5432, user postgres and database postgres for what is not set', () => {
    const target = server(loadConfig({ DB_NAME: 'only_db' }, CWD));
    expect(target).toMatchObject({
      host: 'localhost',
      port: 5432,
      user: 'postgres',
      password: undefined,
      database: 'only_db',
    });
  });

  it.each(['abc', '0', '65536', '54.32', '-1', '5432x'])('rejects DB_PORT=%j naming the variable', (port) => {
    expect(problemsOf({ DB_HOST: 'h', DB_PORT: port })).toEqual([
      `DB_PORT must be a whole number between 1 and 65535, got "${port}"`,
    ]);
  });
});

describe('loadConfig: SSL', () => {
  it('is off unless asked for', () => {
    expect(server(loadConfig({ DB_HOST: 'h' }, CWD)).ssl).toBe(false);
    expect(server(loadConfig({ DB_HOST: 'h', DB_SSL: 'false' }, CWD)).ssl).toBe(false);
    expect(server(loadConfig({ DB_HOST: 'h', DB_SSL: '' }, CWD)).ssl).toBe(false);
  });

  it('DB_SSL=true verifies the server certificate by default; DB_SSL_REJECT_UNAUTHORIZED=false turns that off', () => {
    expect(server(loadConfig({ DB_HOST: 'h', DB_SSL: 'true' }, CWD)).ssl).toEqual({ rejectUnauthorized: true });
    expect(server(loadConfig({ DATABASE_URL: 'postgres://h/db', DB_SSL: 'require' }, CWD)).ssl).toEqual({
      rejectUnauthorized: true,
    });
    expect(server(loadConfig({ DB_HOST: 'h', DB_SSL: '1', DB_SSL_REJECT_UNAUTHORIZED: 'false' }, CWD)).ssl).toEqual({
      rejectUnauthorized: false,
    });
  });

  it('reads the CA file named by DB_SSL_CERT_PATH (absolute, or relative to the working folder)', () => {
    const pem = '-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n';
    writeFileSync(path.join(tmp, 'ca.pem'), pem);
    expect(
      server(loadConfig({ DB_HOST: 'h', DB_SSL: 'true', DB_SSL_CERT_PATH: path.join(tmp, 'ca.pem') }, CWD)).ssl,
    ).toEqual({ ca: pem, rejectUnauthorized: true });
    // A certificate path alone turns SSL on.
    expect(server(loadConfig({ DB_HOST: 'h', DB_SSL_CERT_PATH: 'ca.pem' }, tmp)).ssl).toEqual({
      ca: pem,
      rejectUnauthorized: true,
    });
  });

  it('reports a missing certificate file naming DB_SSL_CERT_PATH and the resolved path', () => {
    const missing = path.join(tmp, 'nope', 'root.crt');
    expect(problemsOf({ DB_HOST: 'h', DB_SSL: 'true', DB_SSL_CERT_PATH: missing })).toEqual([
      `DB_SSL_CERT_PATH: no certificate file at ${missing}`,
    ]);
  });

  it('reports a certificate path that is a folder, naming DB_SSL_CERT_PATH', () => {
    expect(problemsOf({ DB_HOST: 'h', DB_SSL_CERT_PATH: tmp })).toEqual([
      `DB_SSL_CERT_PATH: cannot read ${tmp} (EISDIR)`,
    ]);
  });

  it('rejects a value that is not a boolean, naming the variable', () => {
    expect(problemsOf({ DB_HOST: 'h', DB_SSL: 'maybe' })).toEqual(['DB_SSL must be true or false, got "maybe"']);
    expect(problemsOf({ DB_HOST: 'h', DB_SSL: 'true', DB_SSL_REJECT_UNAUTHORIZED: 'nah' })).toEqual([
      'DB_SSL_REJECT_UNAUTHORIZED must be true or false, got "nah"',
    ]);
  });
});

describe('loadConfig: folders, extensions, embedded default', () => {
  it('resolves the migration folders against the working folder, keeps absolute ones, and has defaults', () => {
    const defaults = loadConfig({}, CWD);
    expect(defaults.masterMigrationsDir).toBe('/srv/app/master-migrations');
    expect(defaults.tenantMigrationsDir).toBe('/srv/app/tenant-migrations');
    const set = loadConfig({ MASTER_MIGRATIONS_DIR: 'db/master', TENANT_MIGRATIONS_DIR: '/opt/tenant' }, CWD);
    expect(set.masterMigrationsDir).toBe('/srv/app/db/master');
    expect(set.tenantMigrationsDir).toBe('/opt/tenant');
  });

  it('TENANT_EXTENSIONS defaults to vector, is a comma list, and empty means none', () => {
    expect(loadConfig({}, CWD).tenantExtensions).toEqual(['vector']);
    expect(loadConfig({ TENANT_EXTENSIONS: '' }, CWD).tenantExtensions).toEqual([]);
    expect(loadConfig({ TENANT_EXTENSIONS: ' citext , hstore,,' }, CWD).tenantExtensions).toEqual(['citext', 'hstore']);
    expect(problemsOf({ TENANT_EXTENSIONS: 'vector; drop table x' })).toEqual([
      'TENANT_EXTENSIONS: "vector; drop table x" is not an extension name',
    ]);
  });

  it('with no database configured, uses the embedded engine in .pglite (or PGLITE_DATA_DIR), one connection', () => {
    const config = loadConfig({}, CWD);
    expect(config.connection).toEqual({ kind: 'embedded', dataDir: '/srv/app/.pglite' });
    expect(config.poolMax).toBe(1);
    expect(loadConfig({ PGLITE_DATA_DIR: 'var/db', DB_POOL_MAX: '20' }, CWD)).toMatchObject({
      connection: { kind: 'embedded', dataDir: '/srv/app/var/db' },
      poolMax: 1,
    });
    // Blank database variables do not count as configuring a server.
    expect(loadConfig({ DATABASE_URL: '  ', DB_HOST: '' }, CWD).connection.kind).toBe('embedded');
    // A server gets the configured pool.
    expect(loadConfig({ DB_HOST: 'h', DB_POOL_MAX: '20' }, CWD).poolMax).toBe(20);
  });

  it('reports every wrong value together, each naming its variable', () => {
    const problems = problemsOf({
      DB_HOST: 'h',
      DB_PORT: 'port',
      DB_SSL: 'sometimes',
      DB_SSL_CERT_PATH: path.join(tmp, 'missing.pem'),
      DB_POOL_MAX: '0',
      LOCK_TIMEOUT: 'soon',
      TENANT_EXTENSIONS: 'vector,Bad Name',
    });
    const named = ['DB_PORT', 'DB_SSL', 'DB_SSL_CERT_PATH', 'DB_POOL_MAX', 'LOCK_TIMEOUT', 'TENANT_EXTENSIONS'];
    expect(problems).toHaveLength(named.length);
    for (const name of named)
      expect(problems.filter((p) => p.startsWith(`${name} `) || p.startsWith(`${name}:`))).toHaveLength(1);
    // One line for the CLI to print.
    expect(new ConfigError(problems).message).not.toContain('\n');
  });
});

describe('what reaches the driver', () => {
  /** The SSL settings node-postgres ends up with for this environment (it resolves them without connecting). */
  function driverSsl(env: Record<string, string>): unknown {
    const knexConfig = knexConfigFor(server(loadConfig(env, CWD)), 1);
    return new pg.Client(knexConfig.connection as pg.ClientConfig).ssl;
  }

  it('hands the CA and DB_SSL_REJECT_UNAUTHORIZED to node-postgres', () => {
    const pem = '-----BEGIN CERTIFICATE-----\nMIIBdriver\n-----END CERTIFICATE-----\n';
    writeFileSync(path.join(tmp, 'driver-ca.pem'), pem);
    const ssl = { DB_SSL_CERT_PATH: path.join(tmp, 'driver-ca.pem'), DB_SSL_REJECT_UNAUTHORIZED: 'false' };
    expect(driverSsl({ DB_HOST: 'db.example.com', ...ssl })).toEqual({ ca: pem, rejectUnauthorized: false });
    expect(driverSsl({ DATABASE_URL: 'postgres://u@db.example.com/app', ...ssl })).toEqual({
      ca: pem,
      rejectUnauthorized: false,
    });
  });

  it('keeps DB_SSL_CERT_PATH and DB_SSL_REJECT_UNAUTHORIZED when DATABASE_URL carries an sslmode (as managed services hand out)', () => {
    const pem = '-----BEGIN CERTIFICATE-----\nMIIBsslmode\n-----END CERTIFICATE-----\n';
    writeFileSync(path.join(tmp, 'sslmode-ca.pem'), pem);
    const ssl = { DB_SSL_CERT_PATH: path.join(tmp, 'sslmode-ca.pem'), DB_SSL_REJECT_UNAUTHORIZED: 'false' };
    // node-postgres lets parameters in the connection string override the ssl object it is given.
    expect(driverSsl({ DATABASE_URL: 'postgres://u@db.example.com/app?sslmode=require', ...ssl })).toMatchObject({
      ca: pem,
      rejectUnauthorized: false,
    });
  });

  let engine: TestEngine;
  /** Host, port, user and database of a live PostgreSQL, as separate values. */
  let live: { host: string; port: string; user: string; database: string };
  let stopLive: () => Promise<void> = async () => undefined;

  beforeAll(async () => {
    engine = await startEngine('config');
    if (engine.url) {
      const url = new URL(engine.url);
      live = {
        host: url.hostname,
        port: url.port || '5432',
        user: decodeURIComponent(url.username) || 'postgres',
        database: url.pathname.slice(1),
      };
    } else {
      // The embedded engine served over TCP, exactly as the toolkit serves it to itself.
      const embedded = await startEmbedded(engine.env.PGLITE_DATA_DIR!);
      live = { host: embedded.host, port: String(embedded.port), user: 'postgres', database: 'postgres' };
      stopLive = () => embedded.stop();
    }
  });

  afterAll(async () => {
    await stopLive();
    await engine?.stop();
  });

  it('connects with DB_HOST, DB_PORT, DB_USER and DB_NAME', async () => {
    const config = loadConfig(
      { DB_HOST: live.host, DB_PORT: live.port, DB_USER: live.user, DB_NAME: live.database },
      ROOT,
    );
    const tk = await openToolkit(config);
    try {
      const result = await tk.knex.raw('select current_user as "user", current_database() as database');
      expect(result.rows[0]).toEqual({ user: live.user, database: live.database });
      expect(tk.describe).toBe(`${live.host}:${live.port}`);
    } finally {
      await tk.close();
    }
  });

  it('DB_SSL=true makes the driver ask for SSL (neither test server offers it)', async () => {
    const config = loadConfig(
      { DB_HOST: live.host, DB_PORT: live.port, DB_USER: live.user, DB_NAME: live.database, DB_SSL: 'true' },
      ROOT,
    );
    const error = await openToolkit(config).then(
      async (tk) => {
        await tk.close();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ConnectionError);
    expect((error as Error).message).toBe(
      `Cannot connect to PostgreSQL at ${live.host}:${live.port}: The server does not support SSL connections`,
    );
  });
});

describe('the CLI on bad configuration', () => {
  const STACK = /^\s+at /m;

  function oneLine(result: CliResult): string {
    const lines = result.stderr.trim().split('\n');
    expect(lines, result.stderr).toHaveLength(1);
    expect(result.stderr).not.toMatch(STACK);
    return lines[0]!;
  }

  it('a port that is not a number: one line naming DB_PORT, exit code 2, nothing on stdout', async () => {
    const result = await runCli(['migrate:master'], { DB_HOST: '127.0.0.1', DB_PORT: 'fivefourthreetwo' });
    expect(result.code).toBe(2);
    expect(oneLine(result)).toBe('error: DB_PORT must be a whole number between 1 and 65535, got "fivefourthreetwo"');
    expect(result.stdout).toBe('');
  });

  it('an unparsable URL and a bad flag value together: both in one line, exit code 2', async () => {
    const result = await runCli(['migrate:status'], {
      DATABASE_URL: 'postgres://user:pw@[::1:5432/db',
      DB_SSL: 'perhaps',
    });
    expect(result.code).toBe(2);
    const line = oneLine(result);
    expect(line).toMatch(/DATABASE_URL is not a valid URL/);
    expect(line).toMatch(/DB_SSL must be true or false, got "perhaps"/);
  });

  it('an unreachable server: one line naming host:port and ECONNREFUSED, non-zero exit; --verbose and DEBUG=1 add the stack', async () => {
    const env = { DATABASE_URL: 'postgres://postgres@127.0.0.1:1/x' };
    const [plain, verbose, debug] = await Promise.all([
      runCli(['migrate:master'], env),
      runCli(['migrate:master', '--verbose'], env),
      runCli(['migrate:master'], { ...env, DEBUG: '1' }),
    ]);
    expect(plain.code).not.toBe(0);
    expect(plain.code).not.toBeNull();
    const line = oneLine(plain);
    expect(line).toContain('127.0.0.1:1');
    expect(line).toContain('ECONNREFUSED');
    for (const result of [verbose, debug]) {
      expect(result.code).toBe(plain.code);
      expect(result.stderr).toContain(line);
      expect(result.stderr).toMatch(STACK);
      expect(result.stderr).toMatch(/ConnectionError: Cannot connect to PostgreSQL at 127\.0\.0\.1:1/);
      // The driver's own error is chained in.
      expect(result.stderr).toMatch(/caused by: .*ECONNREFUSED/);
    }
  });
});
