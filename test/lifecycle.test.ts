/**
 * The end of a tenant's life (docs/lifecycle.md): archive → refused by the runtime at once (a warm
 * cache and the lazy runtime too) and skipped by fan-outs → restore, migrated to the folder's new
 * version first → drop, with a real pg_dump where a server and pg_dump are here; a deleted org id
 * is never provisioned again and its schema name never reused; the Clerk example archives on a
 * signed `organization.deleted`; and on a server, archive and drop wait for a migration of the
 * same tenant running at that very moment.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clerkWebhookHandler } from '../examples/clerk-webhook.ts';
import { PgDumpUnavailableError } from '../src/db/pg-dump.ts';
import {
  createTenantClient,
  createToolkit,
  folderSource,
  type Migration,
  type MigrationSource,
  openToolkit,
  schemaNameFor,
  TenantAccessError,
  type Toolkit,
} from '../src/index.ts';
import { TenantStatusError } from '../src/provisioning/lifecycle.ts';
import { TenantArchivedError, TenantDeletedError } from '../src/runtime/errors.ts';
import { advisoryLocks, session, waitFor } from './fixtures/rel-support/support.ts';
import { signedWebhook, webhookSecret } from './support/clerk.ts';
import { runCli } from './support/cli.ts';
import { FIXTURES, ROOT, startEngine, type TestEngine } from './support/engine.ts';

const PLAIN = path.join(FIXTURES, 'tenant-plain');
const REL_BASE = path.join(FIXTURES, 'rel-base');
const REL_NEXT = path.join(FIXTURES, 'rel-next');
const MASTER = path.join(ROOT, 'master-migrations');

/** pg_dump on PATH or under /usr/lib/postgresql, and a server to dump (the embedded engine cannot be). */
const HAS_PG_DUMP =
  (process.env.PATH ?? '').split(path.delimiter).some((dir) => dir !== '' && existsSync(path.join(dir, 'pg_dump'))) ||
  (existsSync('/usr/lib/postgresql') &&
    readdirSync('/usr/lib/postgresql').some((v) => existsSync(`/usr/lib/postgresql/${v}/bin/pg_dump`)));
const DUMP_HERE = HAS_PG_DUMP && Boolean(process.env.TEST_DATABASE_URL);
const DROP_TITLE = DUMP_HERE
  ? 'drop with --dump (a real pg_dump)'
  : `drop without the dump (${HAS_PG_DUMP ? 'no server here: --dump is refused on the embedded engine' : 'pg_dump is not installed here'})`;

let engine: TestEngine;
let tk: Toolkit;
let plain: readonly Migration[];

const env = (): Record<string, string> => ({
  ...engine.env,
  MASTER_MIGRATIONS_DIR: MASTER,
  TENANT_MIGRATIONS_DIR: PLAIN,
  TENANT_EXTENSIONS: '',
  DB_POOL_MAX: '4',
});
const open = (): Promise<Toolkit> => openToolkit(engine.config(env()));

beforeAll(async () => {
  engine = await startEngine('lifecycle');
  tk = await open();
  expect((await tk.migrateMaster()).error).toBeNull();
  plain = await folderSource(PLAIN).load();
});

afterAll(async () => {
  await tk?.close();
  await engine?.stop();
});

/** Runs `cb` with the real CLI at hand; on PGlite the folder is let go for it (one process at a time), then opened again. */
async function withCli<T>(cb: (cli: (args: readonly string[]) => ReturnType<typeof runCli>) => Promise<T>): Promise<T> {
  if (!engine.multiSession) await tk.close();
  try {
    return await cb((args) => runCli(args, env()));
  } finally {
    if (!engine.multiSession) tk = await open();
  }
}

/** The error line (on PGlite, stderr starts with the embedded engine's notice). */
function lastLine(text: string): string {
  return text.trim().split('\n').at(-1) ?? '';
}

function memoryMigration(name: string, up: (knex: Knex) => Promise<void>): Migration {
  const checksum = createHash('sha256').update(`memory:${name}:v1`).digest('hex');
  return { name, file: `memory:${name}`, checksum, transaction: true, up, down: undefined };
}

function sourceOf(migrations: readonly Migration[]): MigrationSource {
  return { load: async () => migrations };
}

async function expectRejection<E extends Error>(
  promise: Promise<unknown>,
  type: abstract new (...args: never[]) => E,
): Promise<E> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(type);
  return error as E;
}

async function schemaExists(schema: string): Promise<boolean> {
  const result = await tk.knex.raw('select exists (select 1 from pg_namespace where nspname = ?) as present', [schema]);
  return Boolean(result.rows[0]?.present);
}

async function statusOf(orgId: string): Promise<string | undefined> {
  return (await tk.knex('tenants').where({ clerk_org_id: orgId }).first())?.status;
}

describe('archive, restore and drop', () => {
  it(`archive → refused at once (warm cache, lazy runtime) and skipped by migrate:tenants → restore, migrated first → ${DROP_TITLE}`, async () => {
    const orgId = 'org_life_a';
    const provisioned = await tk.provisionTenant(orgId);
    expect(provisioned.error).toBeNull();
    const schema = provisioned.schema;
    await tk.knex.withSchema(schema).table('users').insert({ email: 'kept@a' });
    const emails = (trx: Knex.Transaction) => trx('users').pluck('email');
    // Warm: each has served the tenant, and caches it for an hour.
    const warm = createTenantClient({ knex: tk.knex, cache: { ttlMs: 3_600_000 } });
    const lazy = createTenantClient({ knex: tk.knex, migrations: sourceOf(plain), cache: { ttlMs: 3_600_000 } });
    expect(await warm.withTenant(orgId, emails)).toEqual(['kept@a']);
    expect(await lazy.withTenant(orgId, emails)).toEqual(['kept@a']);

    expect(await tk.archiveTenant(orgId)).toMatchObject({ outcome: 'archived', previousStatus: 'ACTIVE', schema });
    expect((await tk.archiveTenant(orgId)).outcome).toBe('already-archived');
    let ran = 0;
    for (const client of [warm, lazy, createTenantClient({ knex: tk.knex })]) {
      const refused = await expectRejection(
        client.withTenant(orgId, async () => void ran++),
        TenantArchivedError,
      );
      expect(refused).toBeInstanceOf(TenantAccessError);
      expect(refused).toMatchObject({ code: 'E_TENANT_ARCHIVED', httpStatus: 410, status: 'ARCHIVED', schema, orgId });
    }
    expect(ran).toBe(0);
    expect(lazy.stats().lazyMigrationFailures).toBe(0);

    // Fan-outs skip it (not a failure), and a provisioning (a redelivered webhook) never revives it.
    const deploy = await tk.migrateTenants({ orgIds: [orgId] });
    expect(deploy.totals).toMatchObject({ skipped: 1, failed: 0 });
    expect(deploy.tenants[0]?.error?.message).toMatch(/status is ARCHIVED, not ACTIVE \(archived: /);
    await expectRejection(tk.provisionTenant(orgId), TenantArchivedError);
    expect(await statusOf(orgId)).toBe('ARCHIVED');

    // The folder moved on while it was archived: the restore applies the new migration first.
    const notes = memoryMigration('003_notes.ts', async (knex) => {
      await knex.schema.createTable('notes', (t) => {
        t.increments('id');
      });
    });
    const next = createToolkit({ knex: tk.knex, config: tk.config, sources: { tenant: sourceOf([...plain, notes]) } });
    expect(await next.restoreTenant(orgId)).toMatchObject({
      outcome: 'restored',
      previousStatus: 'ARCHIVED',
      migrations: ['003_notes.ts'],
      error: null,
    });
    expect((await next.restoreTenant(orgId)).outcome).toBe('already-active');
    expect(await warm.withTenant(orgId, emails)).toEqual(['kept@a']);
    expect(await warm.withTenant(orgId, (trx) => trx('notes').pluck('id'))).toEqual([]);

    // Drop: only once archived.
    await expectRejection(tk.dropTenant(orgId), TenantStatusError);
    expect((await tk.archiveTenant(orgId)).outcome).toBe('archived');
    const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'lifecycle-dump-')), `${orgId}.sql`);
    if (DUMP_HERE && engine.kind !== 'embedded') {
      const dropped = await tk.dropTenant(orgId, { dumpFile: file });
      expect(dropped).toMatchObject({ outcome: 'dropped', previousStatus: 'ARCHIVED', roleDropped: false });
      expect(dropped.dump?.file).toBe(file);
      const dump = readFileSync(file, 'utf8');
      expect(dump).toContain(`CREATE SCHEMA ${schema};`);
      expect(dump).toContain(`CREATE TABLE ${schema}.users`);
      expect(dump).toContain('kept@a');
      // Refuses to overwrite a dump: checked before anything is locked.
      await expectRejection(tk.dropTenant(orgId, { dumpFile: file }), Error);
    } else {
      if (engine.kind === 'embedded') {
        const refused = await expectRejection(tk.dropTenant(orgId, { dumpFile: file }), PgDumpUnavailableError);
        expect(refused.message).toMatch(/not possible on the embedded engine/);
        expect(existsSync(file)).toBe(false);
        expect(await schemaExists(schema)).toBe(true); // refused, never dropped without its dump
      }
      expect((await tk.dropTenant(orgId)).outcome).toBe('dropped');
    }
    expect(await schemaExists(schema)).toBe(false);
    expect(await tk.knex('tenants').where({ clerk_org_id: orgId }).first()).toMatchObject({
      schema_name: schema,
      status: 'DELETED',
    });
    const gone = await expectRejection(warm.withTenant(orgId, emails), TenantDeletedError);
    expect(gone).toMatchObject({ code: 'E_TENANT_DELETED', status: 'DELETED', httpStatus: 410 });
    expect(gone).toBeInstanceOf(TenantArchivedError);
    expect((await tk.dropTenant(orgId)).outcome).toBe('already-deleted');
    await expectRejection(tk.archiveTenant(orgId), TenantDeletedError);
    await expectRejection(tk.restoreTenant(orgId), TenantDeletedError);
  });

  it('a deleted org id is never provisioned again (E_TENANT_DELETED); an org id colliding with its schema name gets a longer one', async () => {
    const deleted = 'org_life_d';
    expect((await tk.provisionTenant(deleted)).error).toBeNull();
    await tk.archiveTenant(deleted);
    await tk.dropTenant(deleted);
    const refused = await expectRejection(tk.provisionTenant(deleted), TenantDeletedError);
    expect(refused.code).toBe('E_TENANT_DELETED');
    await expectRejection(tk.provisionTenant(deleted, { dryRun: true }), TenantDeletedError);
    const child = await withCli((cli) => cli(['provision:tenant', deleted]));
    expect(child.code).toBe(1);
    expect(lastLine(child.stderr)).toBe(
      `error: Tenant ${deleted} (${schemaNameFor(deleted)}) was deleted: its schema was dropped and the org id is never reused`,
    );

    // A DELETED row holding the name another org id derives first (as a hash collision would leave it).
    const other = 'org_life_collides';
    await tk
      .knex('tenants')
      .insert({ clerk_org_id: 'org_life_gone', schema_name: schemaNameFor(other), status: 'DELETED' });
    expect((await tk.provisionTenant(other, { dryRun: true })).schema).toBe(schemaNameFor(other, 12));
    expect(await tk.provisionTenant(other)).toMatchObject({ outcome: 'provisioned', schema: schemaNameFor(other, 12) });
    expect(await schemaExists(schemaNameFor(other))).toBe(false);
  });

  it('tenant:archive and tenant:drop on the command line: --yes off a terminal, only an ARCHIVED tenant, --json', async () => {
    const orgId = 'org_life_cli';
    const cliOrg = 'org_life_cli_archived';
    for (const org of [orgId, cliOrg]) expect((await tk.provisionTenant(org)).error).toBeNull();
    const [archived, unconfirmed, active, dropped] = await withCli(async (cli) => [
      await cli(['tenant:archive', cliOrg, '--json']),
      await cli(['tenant:drop', cliOrg]),
      await cli(['tenant:drop', orgId, '--yes']),
      await cli(['tenant:drop', cliOrg, '--yes', '--json']),
    ]);
    expect(archived?.code).toBe(0);
    expect(JSON.parse(archived?.stdout ?? '')).toMatchObject({ command: 'tenant:archive', outcome: 'archived' });
    expect(unconfirmed?.code).toBe(2);
    expect(unconfirmed?.stderr).toMatch(/off a terminal, pass --yes/);
    expect(active?.code).toBe(1);
    expect(lastLine(active?.stderr ?? '')).toBe(
      `error: Tenant ${orgId} (${schemaNameFor(orgId)}) is ACTIVE: only an ARCHIVED tenant is dropped (pnpm tenant:archive first)`,
    );
    expect(dropped?.code).toBe(0);
    expect(JSON.parse(dropped?.stdout ?? '')).toMatchObject({
      command: 'tenant:drop',
      outcome: 'dropped',
      schema: schemaNameFor(cliOrg),
    });
    expect(await statusOf(cliOrg)).toBe('DELETED');
    expect(await statusOf(orgId)).toBe('ACTIVE');
  });
});

describe('examples/clerk-webhook.ts', () => {
  const secret = webhookSecret();

  const signed = (payload: unknown, key = secret) => signedWebhook(payload, key);

  it('archives on a signed organization.deleted (redelivery and unknown orgs answered 200), refuses a forged one', async () => {
    const orgId = 'org_life_hook';
    expect((await tk.provisionTenant(orgId)).error).toBeNull();
    const tenants = createTenantClient({ knex: tk.knex, cache: { ttlMs: 3_600_000 } });
    await tenants.withTenant(orgId, async () => undefined);
    const logs: string[] = [];
    const handler = clerkWebhookHandler({ toolkit: tk, tenants, signingSecret: secret, log: (l) => void logs.push(l) });
    const server = http.createServer((req, res) => void handler(req, res).catch(() => res.writeHead(500).end()));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/webhooks/clerk`;
    const deletedEvent = (id: string) => ({
      type: 'organization.deleted',
      object: 'event',
      data: { id, object: 'organization', deleted: true },
    });
    try {
      const forged = signed(deletedEvent(orgId), webhookSecret());
      expect((await fetch(url, { method: 'POST', ...forged })).status).toBe(400);
      expect(await statusOf(orgId)).toBe('ACTIVE');

      const event = signed(deletedEvent(orgId));
      const ok = await fetch(url, { method: 'POST', ...event });
      expect(ok.status).toBe(200);
      expect(await ok.json()).toMatchObject({ orgId, outcome: 'archived' });
      expect(await statusOf(orgId)).toBe('ARCHIVED');
      await expectRejection(
        tenants.withTenant(orgId, async () => undefined),
        TenantArchivedError,
      );
      const again = await fetch(url, { method: 'POST', ...event });
      expect(await again.json()).toMatchObject({ orgId, outcome: 'already-archived' });
      const unknown = await fetch(url, { method: 'POST', ...signed(deletedEvent('org_life_never')) });
      expect(unknown.status).toBe(200);
      expect(await unknown.json()).toMatchObject({ outcome: 'nothing-to-archive' });
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
    expect(logs).toEqual([]);
  });
});

describe('drop racing a migration of the same tenant (server: two sessions at once)', () => {
  it('archive and drop wait for a running migration; a drop waiting on a restore refuses the tenant it finds ACTIVE', async (ctx) => {
    if (!engine.multiSession) return ctx.skip();
    const base = createToolkit({ knex: tk.knex, config: tk.config, sources: { tenant: folderSource(REL_BASE) } });
    const next = createToolkit({ knex: tk.knex, config: tk.config, sources: { tenant: folderSource(REL_NEXT) } });
    const orgId = 'org_life_race';
    const schema = (await base.provisionTenant(orgId)).schema;
    const watcher = await session(engine);
    const slow = (): string => {
      // 002_notes.ts hangs 1.5 s in pg_sleep inside the tenant's transaction, holding its lock.
      const marker = path.join(mkdtempSync(path.join(os.tmpdir(), 'lifecycle-race-')), 'hang');
      process.env.REL_HANG_MARKER = marker;
      process.env.REL_HANG_MS = '1500';
      return marker;
    };
    try {
      // 1. A deploy is migrating the tenant; archive, then drop, are asked for meanwhile.
      let marker = slow();
      const deploy = next.migrateTenants({ orgIds: [orgId] });
      await waitFor('the migration to hold the tenant lock', () => existsSync(marker));
      const retire = next
        .archiveTenant(orgId)
        .then(async (archived) => ({ archived, dropped: await next.dropTenant(orgId) }));
      await waitFor('the archive to wait for the lock', async () =>
        (await advisoryLocks(watcher)).some((l) => !l.granted),
      );
      const [migrated, { archived, dropped }] = await Promise.all([deploy, retire]);
      // The migration committed whole; the archive waited out the rest of its 1.5 s sleep.
      expect(migrated.totals).toMatchObject({ migrated: 1, failed: 0 });
      expect(archived.outcome).toBe('archived');
      expect(archived.durationMs).toBeGreaterThan(800);
      expect(dropped.outcome).toBe('dropped');
      expect(await schemaExists(schema)).toBe(false);

      // 2. A restore is migrating an archived tenant while a drop is asked for: the drop waits,
      //    then finds it ACTIVE and refuses; nothing is dropped.
      const again = 'org_life_race_2';
      const schema2 = (await base.provisionTenant(again)).schema;
      await base.archiveTenant(again);
      marker = slow();
      const restore = next.restoreTenant(again);
      await waitFor('the restore to hold the tenant lock', () => existsSync(marker));
      const drop = next.dropTenant(again).then(
        () => 'dropped',
        (error: unknown) => error,
      );
      await waitFor('the drop to wait for the lock', async () =>
        (await advisoryLocks(watcher)).some((l) => !l.granted),
      );
      expect((await restore).outcome).toBe('restored');
      const refused = await drop;
      expect(refused).toBeInstanceOf(TenantStatusError);
      expect((refused as TenantStatusError).status).toBe('ACTIVE');
      expect(await schemaExists(schema2)).toBe(true);
      expect(await statusOf(again)).toBe('ACTIVE');
      expect(await advisoryLocks(watcher)).toEqual([]);
    } finally {
      delete process.env.REL_HANG_MARKER;
      delete process.env.REL_HANG_MS;
      await watcher.end();
    }
  });
});
