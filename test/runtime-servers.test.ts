import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import knexFactory, { type Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/config.ts';
import { folderSource } from '../src/migrations/source.ts';
import { createTenantClient, type TenantClient } from '../src/runtime/client.ts';
import { TenantArchivedError, TenantUnavailableError } from '../src/runtime/errors.ts';
import { schemaNameFor } from '../src/tenants/naming.ts';
import { openToolkit, type Toolkit } from '../src/toolkit.ts';
import { ROOT } from './support/engine.ts';
import { createDatabases, requireServersOrSkip, type ServerDatabases } from './support/servers.ts';

/*
 * The runtime over tenants on three real servers (127.0.0.1:5432 with the registry, :5433 and
 * :5434 as eu1 and eu2): each call goes to its tenant's server, from the registry, cached.
 */

const skip = await requireServersOrSkip();
const MASTER = path.join(ROOT, 'master-migrations');
const ITEMS = `export async function up(knex) {
  await knex.schema.createTable('items', (t) => { t.increments('id'); t.text('org'); });
}
export async function down(knex) { await knex.schema.dropTable('items'); }
`;
const NOTES = `export async function up(knex) {
  await knex.schema.createTable('notes', (t) => { t.increments('id'); t.text('body'); });
}
export async function down(knex) { await knex.schema.dropTable('notes'); }
`;
const TENANTS = 30;
const REQUESTS = 1000;

describe.skipIf(skip)('the runtime over several servers', () => {
  let dbs: ServerDatabases;
  let dir: string;
  let tk: Toolkit;
  let pools: Record<string, Knex>;
  let main: Knex;
  let client: TenantClient;
  const orgs = Array.from({ length: TENANTS }, (_, i) => `org_rts_${i}`);
  const portOf = new Map<string, number>();

  beforeAll(async () => {
    dbs = await createDatabases('rt_servers');
    dir = mkdtempSync(path.join(os.tmpdir(), 'rt-servers-'));
    writeFileSync(path.join(dir, '001_items.js'), ITEMS);
    tk = await openToolkit(
      loadConfig(
        { ...dbs.env(), MASTER_MIGRATIONS_DIR: MASTER, TENANT_MIGRATIONS_DIR: dir, TENANT_EXTENSIONS: '' },
        ROOT,
      ),
    );
    expect((await tk.migrateMaster()).error).toBeNull();
    const ports: Record<string, number> = { main: 5432, eu1: 5433, eu2: 5434 };
    for (const [i, org] of orgs.entries()) {
      const server = ['main', 'eu1', 'eu2'][i % 3]!;
      const report = await tk.provisionTenant(org, { server });
      expect(report.outcome, report.error?.message).toBe('provisioned');
      portOf.set(org, ports[server]!);
    }
    // Each tenant's one row names it: a read that reaches another tenant's table would show it.
    const servers = new Map<string, string | null>(
      (await tk.knex('tenants').withSchema('public').select('clerk_org_id', 'server')).map(
        (r: { clerk_org_id: string; server: string | null }) => [r.clerk_org_id, r.server],
      ),
    );
    main = knexFactory({ client: 'pg', connection: dbs.main, pool: { min: 0, max: 5 } });
    pools = {
      eu1: knexFactory({ client: 'pg', connection: dbs.extra[0], pool: { min: 0, max: 5 } }),
      eu2: knexFactory({ client: 'pg', connection: dbs.extra[1], pool: { min: 0, max: 5 } }),
    };
    client = createTenantClient({ knex: main, servers: pools });
    for (const org of orgs) {
      await client.withTenant(org, (trx) => trx('items').insert({ org }));
      expect(servers.get(org) ?? 'main').toBe(['main', 'eu1', 'eu2'][orgs.indexOf(org) % 3]);
    }
  });
  afterAll(async () => {
    await main?.destroy();
    for (const pool of Object.values(pools ?? {})) await pool.destroy();
    await tk?.close();
    await dbs?.drop();
  });

  it(`routes ${REQUESTS} pooled requests to the right servers, with zero cross-tenant reads`, async () => {
    let next = 0;
    const wrong: string[] = [];
    const perPort = new Map<number, number>();
    const worker = async (): Promise<void> => {
      while (next < REQUESTS) {
        const org = orgs[(next++ * 7) % TENANTS]!;
        const seen = await client.withTenant(org, async (trx) => {
          const rows = await trx('items').select('org');
          const port = await trx.raw('select inet_server_port() as port');
          return { orgs: rows.map((r: { org: string }) => r.org), port: Number(port.rows[0].port) };
        });
        if (seen.orgs.join() !== org || seen.port !== portOf.get(org)) wrong.push(`${org}: ${JSON.stringify(seen)}`);
        perPort.set(seen.port, (perPort.get(seen.port) ?? 0) + 1);
      }
    };
    // More callers than any one pool has connections.
    await Promise.all(Array.from({ length: 16 }, worker));
    expect(wrong).toEqual([]);
    expect([...perPort.keys()].sort()).toEqual([5432, 5433, 5434]);
    expect([...perPort.values()].reduce((a, b) => a + b, 0)).toBe(REQUESTS);
    // Cached: one registry lookup per tenant, not per call.
    expect(client.stats().registryLookups).toBe(TENANTS);
  });

  it('refuses a remote tenant archived while cached, at once; and a server it is not given', async () => {
    const org = orgs[1]!; // on eu1
    await client.withTenant(org, (trx) => trx.raw('select 1'));
    expect((await tk.archiveTenant(org)).outcome).toBe('archived');
    await expect(client.withTenant(org, (trx) => trx.raw('select 1'))).rejects.toBeInstanceOf(TenantArchivedError);
    expect((await tk.restoreTenant(org)).outcome).toBe('restored');
    await client.withTenant(org, (trx) => trx.raw('select 1'));

    const partial = createTenantClient({ knex: main, servers: { eu1: pools.eu1! } });
    await expect(partial.withTenant(orgs[2]!, (trx) => trx.raw('select 1'))).rejects.toBeInstanceOf(
      TenantUnavailableError,
    );
    await expect(partial.withTenant(orgs[2]!, (trx) => trx.raw('select 1'))).rejects.toThrow(/eu2/);
  });

  it('migrates a remote tenant lazily on its own server, recording it on main', async () => {
    writeFileSync(path.join(dir, '002_notes.js'), NOTES);
    const lazy = createTenantClient({ knex: main, servers: pools, migrations: folderSource(dir) });
    const org = orgs[2]!; // on eu2
    const port = await lazy.withTenant(org, async (trx) => {
      await trx('notes').insert({ body: 'hello' });
      return Number((await trx.raw('select inet_server_port() as port')).rows[0].port);
    });
    expect(port).toBe(5434);
    expect(lazy.stats()).toMatchObject({ lazyMigrationRuns: 1, lazyMigrationFailures: 0 });
    const [row] = await main('tenants')
      .withSchema('public')
      .where({ clerk_org_id: org })
      .select('migrations_digest', 'last_migration_error');
    expect(row.last_migration_error).toBeNull();
    expect(row.migrations_digest).not.toBeNull();
    const tracked = await pools.eu2!.raw(`select name from "${schemaNameFor(org)}".knex_migrations_tenant order by id`);
    expect(tracked.rows.map((r: { name: string }) => r.name)).toEqual(['001_items.js', '002_notes.js']);
  });
});
