import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import knexFactory from 'knex';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { type Env, loadConfig, redactUrl, type ToolkitConfig } from '../../src/config/config.ts';
import { configFromProject } from '../../src/config/project.ts';
import { knexConfigFor } from '../../src/db/connection.ts';
import { placeTenant, Servers, UnknownServerError } from '../../src/db/servers.ts';
import { ConfigError } from '../../src/errors.ts';

// TENANT_SERVERS and MAIN_SERVER_WEIGHT, the Servers registry of pools, and the placement rule.
// No database: no pool here ever connects.

const CWD = '/srv/app';
const MAIN = { DATABASE_URL: 'postgres://app:mainpw@db-main:5432/app' };
const tmp = mkdtempSync(path.join(os.tmpdir(), 'unit-servers-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function problemsOf(env: Env, cwd = CWD): readonly string[] {
  try {
    loadConfig(env, cwd);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).problems;
  }
  throw new Error(`loadConfig accepted ${JSON.stringify(env)}`);
}

describe('loadConfig: TENANT_SERVERS', () => {
  it('is empty without TENANT_SERVERS, and the main server weighs 1', () => {
    const config = loadConfig(MAIN, CWD);
    expect(config.servers).toEqual([]);
    expect(config.mainServerWeight).toBe(1);
    expect(loadConfig({}, CWD).servers).toEqual([]);
    expect(loadConfig({ ...MAIN, TENANT_SERVERS: '  ' }, CWD).servers).toEqual([]);
  });

  it('reads name=URL entries in order, with the URL parts as DATABASE_URL has them', () => {
    const config = loadConfig(
      {
        ...MAIN,
        DB_POOL_MAX: '7',
        TENANT_SERVERS: ' eu1=postgres://u:p%40ss@host-1:5433/app , eu2=postgresql://host-2/other,',
      },
      CWD,
    );
    expect(config.servers).toEqual([
      {
        name: 'eu1',
        target: {
          kind: 'server',
          host: 'host-1',
          port: 5433,
          user: 'u',
          password: 'p@ss',
          database: 'app',
          describe: 'host-1:5433',
          connectionString: 'postgres://u:p%40ss@host-1:5433/app',
          ssl: false,
        },
        poolMax: 7,
        weight: 1,
      },
      expect.objectContaining({ name: 'eu2', poolMax: 7, weight: 1 }),
    ]);
    expect(config.servers[1]?.target).toMatchObject({ host: 'host-2', port: 5432, database: 'other' });
  });

  it('reads pool_max and weight from the URL and removes them, keeping the driver parameters', () => {
    const [server] = loadConfig(
      {
        ...MAIN,
        TENANT_SERVERS: 'eu1=postgres://u:p@h:5433/app?pool_max=3&application_name=tm&weight=0&sslmode=require',
      },
      CWD,
    ).servers;
    expect(server).toMatchObject({ name: 'eu1', poolMax: 3, weight: 0 });
    const url = new URL(server!.target.connectionString!);
    expect([...url.searchParams.keys()]).toEqual(['application_name', 'sslmode']);
    expect(url.password).toBe('p');
  });

  it('takes MAIN_SERVER_WEIGHT, and allows weight 0 as long as one server receives tenants', () => {
    const config = loadConfig(
      { ...MAIN, MAIN_SERVER_WEIGHT: '0', TENANT_SERVERS: 'a=postgres://h1/app?weight=2,b=postgres://h2/app?weight=0' },
      CWD,
    );
    expect(config.mainServerWeight).toBe(0);
    expect(config.servers.map((s) => [s.name, s.weight])).toEqual([
      ['a', 2],
      ['b', 0],
    ]);
  });

  it('works with DB_* for the main server', () => {
    const config = loadConfig({ DB_HOST: 'db-main', TENANT_SERVERS: 'eu1=postgres://h1/app' }, CWD);
    expect(config.servers.map((s) => s.name)).toEqual(['eu1']);
  });

  it('gives every server the TLS of DB_SSL and DB_SSL_CERT_PATH, which win over sslmode in its URL', () => {
    writeFileSync(path.join(tmp, 'ca.pem'), 'CA');
    const env = {
      ...MAIN,
      DB_SSL_CERT_PATH: 'ca.pem',
      TENANT_SERVERS: 'eu1=postgres://h1/app?sslmode=disable&weight=2',
    };
    const [server] = loadConfig(env, tmp).servers;
    expect(server!.target.ssl).toEqual({ ca: 'CA', rejectUnauthorized: true });
    const connection = knexConfigFor(server!.target, server!.poolMax).connection as {
      connectionString: string;
      ssl: unknown;
    };
    expect(connection.connectionString).toBe('postgres://h1/app');
    expect(connection.ssl).toEqual({ ca: 'CA', rejectUnauthorized: true });
    const insecure = loadConfig({ ...MAIN, DB_SSL: 'true', DB_SSL_REJECT_UNAUTHORIZED: 'false', ...pick(env) }, tmp);
    expect(insecure.servers[0]?.target.ssl).toEqual({ ca: 'CA', rejectUnauthorized: false });
    // Without DB_SSL*, the URL's own sslmode reaches the driver.
    const own = loadConfig({ ...MAIN, TENANT_SERVERS: 'eu1=postgres://h1/app?sslmode=require' }, CWD).servers[0]!;
    expect(own.target.ssl).toBe(false);
    expect(own.target.connectionString).toBe('postgres://h1/app?sslmode=require');
  });

  it('reports every problem at once, each naming its variable', () => {
    const problems = problemsOf({
      ...MAIN,
      DB_POOL_MAX: 'x',
      MAIN_SERVER_WEIGHT: '-1',
      TENANT_SERVERS: [
        'Eu1=postgres://h1/app',
        'main=postgres://h2/app',
        'eu3=postgres://h3/app',
        'eu3=postgres://h4/app',
        'eu5=mysql://h5/app',
        'eu6=postgres://h6:99999/app',
        'eu7=postgres://h7/app?pool_max=0&weight=1.5',
        'eu8=postgres://h8/app?weight=1&weight=2',
        'eu9=postgres://db-main:5432/app',
        'eu10=postgres://H3/app',
        'postgres://h11/app',
      ].join(','),
    });
    expect(problems).toEqual([
      'DB_POOL_MAX must be a whole number between 1 and 1000, got "x"',
      'TENANT_SERVERS: "Eu1" is not a server name (a lowercase letter, then up to 31 of a-z, 0-9, _ and -)',
      'TENANT_SERVERS: "main" is reserved for the server of DATABASE_URL (or DB_*)',
      'TENANT_SERVERS: "eu3" is named twice',
      'TENANT_SERVERS (eu5) must start with postgres:// or postgresql://, not mysql://',
      'TENANT_SERVERS (eu6) is not a valid URL (expected postgres://user:password@host:5432/database)',
      'TENANT_SERVERS (eu7): pool_max must be a whole number between 1 and 1000, got "0"',
      'TENANT_SERVERS (eu7): weight must be a whole number between 0 and 1000000, got "1.5"',
      'TENANT_SERVERS (eu8): weight is given 2 times',
      'TENANT_SERVERS (eu9) is the same database as "main" (db-main:5432/app)',
      'TENANT_SERVERS (eu10) is the same database as "eu3" (h3:5432/app)',
      'TENANT_SERVERS: entry 11 must be name=postgres://…, got "postgres://h11/app"',
      'MAIN_SERVER_WEIGHT must be a whole number between 0 and 1000000, got "-1"',
    ]);
  });

  it('refuses TENANT_SERVERS on the embedded engine', () => {
    expect(problemsOf({ TENANT_SERVERS: 'eu1=postgres://h1/app' })).toEqual([
      'TENANT_SERVERS needs the main server as DATABASE_URL (or DB_*): the embedded engine cannot be one of several servers',
    ]);
  });

  it('refuses weights that leave no server for new tenants', () => {
    expect(problemsOf({ ...MAIN, MAIN_SERVER_WEIGHT: '0' })).toEqual([
      expect.stringContaining('MAIN_SERVER_WEIGHT=0 leaves no server for new tenants'),
    ]);
    expect(problemsOf({ ...MAIN, MAIN_SERVER_WEIGHT: '0', TENANT_SERVERS: 'a=postgres://h1/db?weight=0' })).toEqual([
      'MAIN_SERVER_WEIGHT and every weight= of TENANT_SERVERS are 0: no server would receive new tenants',
    ]);
  });

  it.each([
    ['a URL without a name', 'postgres://u:secret@h1/app'],
    ['a URL without a name whose password holds =', 'postgres://u:sec=ret@h1/app'],
    ['a password with , and @ unescaped', 'eu1=postgres://u:se,cr@et@h1/app'],
    ['another protocol', 'eu1=mysql://u:secret@h1/app'],
    ['a bad port', 'eu1=postgres://u:secret@h1:99999/app'],
    ['a bad parameter', 'eu1=postgres://u:secret@h1/app?pool_max=none'],
    ['the same database twice', 'eu1=postgres://u:secret@h1/app,eu2=postgres://v:secret@h1/app'],
    ['a bad name', 'EU=postgres://u:secret@h1/app'],
    ['a name with a colon', 'u:secret@h1=x'],
    ['no // after the scheme', 'postgres:u:secret@h1/app'],
    ['a name, but no // after the scheme', 'eu1=postgres:u:secret@h1/app'],
  ])('never shows a password in a problem: %s', (_, servers) => {
    const problems = problemsOf({ ...MAIN, TENANT_SERVERS: servers });
    expect(problems.length).toBeGreaterThan(0);
    for (const problem of problems) {
      expect(problem).toMatch(/^TENANT_SERVERS/);
      expect(problem).not.toMatch(/secret|cret|se,cr|mainpw/);
    }
  });

  it('redactUrl replaces the password, and shows nothing of what is not a URL', () => {
    expect(redactUrl('postgres://u:secret@h:5433/app?sslmode=require')).toBe(
      'postgres://u:***@h:5433/app?sslmode=require',
    );
    expect(redactUrl('postgres://u@h/app')).toBe('postgres://u@h/app');
    expect(redactUrl('postgres://u:secret@h:port/app')).toBeUndefined();
    expect(redactUrl('u:secret@h1')).toBeUndefined();
    expect(redactUrl('postgres:u:secret@h1')).toBeUndefined();
  });
});

describe('configFromProject: tenantServers and mainServerWeight', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });
  const project = (settings: unknown): string => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'project-servers-'));
    dirs.push(dir);
    writeFileSync(path.join(dir, 'tenant-migrate.config.json'), JSON.stringify(settings));
    return dir;
  };

  it('takes TENANT_SERVERS text or an object of name to URL, and the environment wins', async () => {
    const asText = await configFromProject(
      project({ tenantServers: 'eu1=postgres://h1/app', mainServerWeight: 3 }),
      MAIN,
    );
    expect(asText.servers.map((s) => s.name)).toEqual(['eu1']);
    expect(asText.mainServerWeight).toBe(3);
    const dir = project({ tenantServers: { eu1: 'postgres://u:a,b@h1/app?weight=2', eu2: 'postgres://h2/app' } });
    const asObject = await configFromProject(dir, MAIN);
    expect(asObject.servers.map((s) => [s.name, s.weight, s.target.password])).toEqual([
      ['eu1', 2, 'a,b'],
      ['eu2', 1, undefined],
    ]);
    const overridden = await configFromProject(dir, { ...MAIN, TENANT_SERVERS: 'x=postgres://h9/app' });
    expect(overridden.servers.map((s) => s.name)).toEqual(['x']);
  });

  it('refuses an object whose values are not URLs or whose names cannot be read back', async () => {
    const error = await configFromProject(
      project({ tenantServers: { eu1: 5, 'a,b': 'postgres://h/app' } }),
      MAIN,
    ).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).problems).toEqual([
      'tenant-migrate.config.json: "tenantServers": "eu1" must be a URL (a string)',
      'tenant-migrate.config.json: "tenantServers": "a,b" is not a server name',
    ]);
  });
});

describe('Servers', () => {
  const config = (): ToolkitConfig =>
    loadConfig(
      {
        ...MAIN,
        MAIN_SERVER_WEIGHT: '2',
        TENANT_SERVERS: 'eu1=postgres://u:pw@127.0.0.1:1/one?pool_max=4&weight=3,eu2=postgres://127.0.0.1:2',
      },
      CWD,
    );
  const mainKnex = () => knexFactory({ client: 'pg', connection: { host: '127.0.0.1', port: 1 } });

  it('names main first, knows each server, and weighs them', () => {
    const servers = new Servers(config(), mainKnex());
    expect(servers.names).toEqual(['main', 'eu1', 'eu2']);
    expect(['main', 'eu1', 'eu2', 'eu3'].map((n) => servers.has(n))).toEqual([true, true, true, false]);
    expect([...servers.weights()]).toEqual([
      ['main', 2],
      ['eu1', 3],
      ['eu2', 1],
    ]);
    expect(servers.names.map((n) => servers.describe(n))).toEqual([
      'db-main:5432/app',
      '127.0.0.1:1/one',
      '127.0.0.1:2',
    ]);
  });

  it('describes an embedded main server by its folder', () => {
    const servers = new Servers(loadConfig({}, CWD), mainKnex());
    expect(servers.names).toEqual(['main']);
    expect(servers.describe('main')).toBe('embedded database at /srv/app/.pglite');
  });

  it('hands out the main Knex for null and main, opens a pool per server once, and closes only those', async () => {
    const main = mainKnex();
    const destroyMain = vi.spyOn(main, 'destroy');
    const servers = new Servers(config(), main);
    expect(servers.knexFor(null)).toBe(main);
    expect(servers.knexFor('main')).toBe(main);
    const eu1 = servers.knexFor('eu1');
    expect(eu1).not.toBe(main);
    expect(servers.knexFor('eu1')).toBe(eu1);
    expect(servers.knexFor('eu2')).not.toBe(eu1);
    expect(eu1.client.config.pool).toEqual({ min: 0, max: 4 });
    expect(eu1.client.config.connection.connectionString).toBe('postgres://u:pw@127.0.0.1:1/one');
    const destroyEu1 = vi.spyOn(eu1, 'destroy');
    await servers.close();
    expect(destroyEu1).toHaveBeenCalledOnce();
    expect(destroyMain).not.toHaveBeenCalled();
    // Closed pools are forgotten: the next use opens a new one.
    const again = servers.knexFor('eu1');
    expect(again).not.toBe(eu1);
    await servers.close();
    await main.destroy();
  });

  it('refuses a server that is not configured, naming the known ones', () => {
    const servers = new Servers(config(), mainKnex());
    expect(() => servers.knexFor('eu9')).toThrow(UnknownServerError);
    expect(() => servers.describe('eu9')).toThrow('no server named "eu9" is configured (known: main, eu1, eu2');
    try {
      servers.knexFor('eu9');
    } catch (error) {
      expect(error).toMatchObject({ code: 'E_UNKNOWN_SERVER', exitCode: 2, server: 'eu9' });
    }
  });
});

describe('placeTenant', () => {
  const map = (entries: Record<string, number>): ReadonlyMap<string, number> => new Map(Object.entries(entries));

  it('places on the server with the fewest tenants per unit of weight', () => {
    expect(placeTenant(map({ main: 10, eu1: 3, eu2: 5 }), map({ main: 1, eu1: 1, eu2: 1 }))).toBe('eu1');
    // 10/5 = 2 < 3/1
    expect(placeTenant(map({ main: 10, eu1: 3 }), map({ main: 5, eu1: 1 }))).toBe('main');
    // A server missing from counts has none.
    expect(placeTenant(map({ main: 1 }), map({ main: 1, eu1: 1 }))).toBe('eu1');
  });

  it('breaks ties by the order of the names, main first', () => {
    expect(placeTenant(map({}), map({ eu1: 1, main: 1, eu2: 1 }))).toBe('main');
    expect(placeTenant(map({ main: 4, eu1: 2, eu2: 2 }), map({ main: 2, eu2: 1, eu1: 1 }))).toBe('main');
    expect(placeTenant(map({ main: 5, eu1: 2, eu2: 2 }), map({ main: 2, eu2: 1, eu1: 1 }))).toBe('eu2');
    // Exact ratios: 1/3 and 2/6 tie (no floating point).
    expect(placeTenant(map({ eu1: 1, eu2: 2 }), map({ eu1: 3, eu2: 6 }))).toBe('eu1');
  });

  it('gives a server of weight 0 nothing, and nothing at all when every weight is 0', () => {
    expect(placeTenant(map({ main: 100, eu1: 0 }), map({ main: 1, eu1: 0 }))).toBe('main');
    expect(placeTenant(map({}), map({ main: 0, eu1: 0 }))).toBeUndefined();
    expect(placeTenant(map({ main: 1 }), map({}))).toBeUndefined();
    // Counts of servers no longer configured are ignored.
    expect(placeTenant(map({ gone: 0, main: 3 }), map({ main: 1 }))).toBe('main');
  });

  it('fills servers in proportion to their weights', () => {
    const weights = map({ main: 1, eu1: 3, eu2: 0, eu3: 2 });
    const counts = new Map<string, number>();
    for (let i = 0; i < 60; i++) {
      const name = placeTenant(counts, weights)!;
      counts.set(name, (counts.get(name) ?? 0) + 1);
    }
    expect(Object.fromEntries(counts)).toEqual({ main: 10, eu1: 30, eu3: 20 });
  });
});

/** The TENANT_SERVERS and DB_SSL_CERT_PATH of an env. */
function pick(env: Env): Env {
  return { TENANT_SERVERS: env.TENANT_SERVERS, DB_SSL_CERT_PATH: env.DB_SSL_CERT_PATH };
}
