import knexFactory from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/config.ts';
import { knexConfigFor } from '../src/db/connection.ts';
import { Servers } from '../src/db/servers.ts';
import { ROOT } from './support/engine.ts';
import {
  createDatabases,
  EXTRA_SERVER_URLS,
  MAIN_SERVER_URL,
  queryOn as query,
  requireServersOrSkip,
  type ServerDatabases,
} from './support/servers.ts';

/*
 * The multi-server test support on the real servers (127.0.0.1:5432, :5433, :5434): one fresh
 * database per server, reached through TENANT_SERVERS and Servers, and dropped again.
 */

const skip = await requireServersOrSkip();

describe.skipIf(skip)('multi-server test support', () => {
  let dbs: ServerDatabases;

  beforeAll(async () => {
    dbs = await createDatabases('servers_support');
  });
  afterAll(async () => {
    await dbs?.drop();
  });

  it('creates one database per server, on three distinct servers', async () => {
    const urls = [dbs.main, ...dbs.extra];
    const seen = await Promise.all(
      urls.map(async (url) => {
        const [row] = await query<{ db: string; port: number; id: string }>(
          url,
          'select current_database() as db, inet_server_port() as port, system_identifier::text as id from pg_control_system()',
        );
        return row!;
      }),
    );
    expect(seen.map((r) => [r.db, r.port])).toEqual([
      [dbs.name, 5432],
      [dbs.name, 5433],
      [dbs.name, 5434],
    ]);
    expect(new Set(seen.map((r) => r.id)).size).toBe(3);
  });

  it('reaches each database through TENANT_SERVERS and Servers', async () => {
    const config = loadConfig(dbs.env(), ROOT);
    if (config.connection.kind !== 'server') throw new Error('expected a server');
    const main = knexFactory(knexConfigFor(config.connection, 2));
    const servers = new Servers(config, main);
    try {
      expect(servers.names).toEqual(['main', 'eu1', 'eu2']);
      const ports = await Promise.all(
        servers.names.map(async (name) => {
          const { rows } = await servers
            .knexFor(name)
            .raw('select inet_server_port() as port, current_database() as db');
          return [name, rows[0].port, rows[0].db];
        }),
      );
      expect(ports).toEqual([
        ['main', 5432, dbs.name],
        ['eu1', 5433, dbs.name],
        ['eu2', 5434, dbs.name],
      ]);
      expect(servers.describe('eu2')).toBe(`127.0.0.1:5434/${dbs.name}`);
    } finally {
      await servers.close();
      await main.destroy();
    }
  });

  it('drops every database again, and a second drop is harmless', async () => {
    await dbs.drop();
    for (const admin of [MAIN_SERVER_URL, ...EXTRA_SERVER_URLS]) {
      const rows = await query(admin, 'select 1 from pg_database where datname = $1', [dbs.name]);
      expect(rows).toEqual([]);
    }
    await dbs.drop();
  });
});
