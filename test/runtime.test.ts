import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import knexFactory, { type Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clerkWebhookHandler, type Handler, settingsHandler } from '../examples/clerk-webhook.ts';
import {
  ConfigError,
  createTenantClient,
  createToolkit,
  folderSource,
  type LazyMigrationEvent,
  type Migration,
  type MigrationSource,
  openToolkit,
  RegistryMissingError,
  TenantAccessError,
  TenantArchivedError,
  type TenantClient,
  TenantNotFoundError,
  TenantUnavailableError,
  type Toolkit,
} from '../src/index.ts';
import { signedWebhook, webhookSecret } from './support/clerk.ts';
import { FIXTURES, startEngine, type TestEngine } from './support/engine.ts';

const PLAIN = path.join(FIXTURES, 'tenant-plain');
/** 50 tenants, served over a pool of 4 connections (1 on PGlite). */
const LOAD_TENANTS = 50;
const LOAD_CALLS = 3000;
const LOAD_WORKERS = 16;
const LOAD_ORGS = Array.from({ length: LOAD_TENANTS }, (_, i) => `org_load_${String(i).padStart(2, '0')}`);

let engine: TestEngine;
let tk: Toolkit;
let base: readonly Migration[];
const schemaOf = new Map<string, string>();

beforeAll(async () => {
  const started = Date.now();
  engine = await startEngine('runtime');
  tk = await openToolkit(engine.config({ TENANT_MIGRATIONS_DIR: PLAIN, TENANT_EXTENSIONS: '', DB_POOL_MAX: '4' }));
  expect((await tk.migrateMaster()).error).toBeNull();
  base = await folderSource(PLAIN).load();
  const opened = Date.now();
  await provisionAll(LOAD_ORGS);
  console.info(
    `[runtime] ${engine.kind}: engine ready in ${opened - started} ms, ${LOAD_TENANTS} tenants provisioned in ${Date.now() - opened} ms`,
  );
  // Each schema's owner marker is written with an explicit schema, independently of the client under test.
  for (const orgId of LOAD_ORGS) {
    await tk.knex
      .withSchema(schema(orgId))
      .table('settings')
      .insert({ key: 'owner', value: JSON.stringify({ org: orgId }) });
  }
});

afterAll(async () => {
  await tk?.close();
  await engine?.stop();
});

/** Provisions org ids (a few at once) and remembers their schemas. */
async function provisionAll(orgIds: readonly string[], toolkit: Toolkit = tk): Promise<void> {
  await inParallel(orgIds, 4, async (orgId) => {
    const report = await toolkit.provisionTenant(orgId);
    expect(report.error).toBeNull();
    schemaOf.set(orgId, report.schema);
  });
}

async function inParallel<T>(
  items: readonly T[],
  workers: number,
  fn: (item: T, index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const index = next++;
      await fn(items[index]!, index);
    }
  };
  await Promise.all(Array.from({ length: workers }, worker));
}

function schema(orgId: string): string {
  const name = schemaOf.get(orgId);
  if (!name) throw new Error(`${orgId} was not provisioned`);
  return name;
}

/** The session's search_path and the value it resets to, on a connection of `knex`'s pool. */
async function sessionPath(knex: Knex): Promise<{ setting: string; reset_val: string }> {
  const result = await knex.raw("select setting, reset_val from pg_settings where name = 'search_path'");
  return result.rows[0];
}

/**
 * A Knex whose pool is one connection, so that a query after `withTenant` provably runs on the
 * connection it used. PGlite accepts one client only: there it is the toolkit's (already one).
 */
async function withSingleConnection(cb: (knex: Knex) => Promise<void>): Promise<void> {
  if (!engine.multiSession) return cb(tk.knex);
  const knex = knexFactory({ client: 'pg', connection: engine.url, pool: { min: 0, max: 1 } });
  try {
    await cb(knex);
  } finally {
    await knex.destroy();
  }
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

/** A migration held in memory: the tests count its runs. */
function memoryMigration(name: string, up: (knex: Knex) => Promise<void>): Migration {
  const checksum = createHash('sha256').update(`memory:${name}:v1`).digest('hex'); // 64 hex digits, as the checksum table stores them
  return { name, file: `memory:${name}`, checksum, transaction: true, up, down: undefined };
}

function sourceOf(migrations: readonly Migration[]): MigrationSource {
  return { load: async () => migrations };
}

describe('withTenant under load', () => {
  it(`serves ${LOAD_CALLS} interleaved calls over ${LOAD_TENANTS} tenants and a small pool with zero cross-tenant reads`, async () => {
    // A TTL longer than the run, so that the lookup count below does not depend on the machine's speed.
    const tenants = createTenantClient({ knex: tk.knex, cache: { ttlMs: 3_600_000 } });
    const wrong: string[] = [];
    const calls = new Map<string, number>();
    let seed = 42;
    const random = (): number => {
      seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648;
      return seed / 2_147_483_648;
    };
    const plan = Array.from({ length: LOAD_CALLS }, () => LOAD_ORGS[Math.floor(random() * LOAD_ORGS.length)]!);

    const started = Date.now();
    await inParallel(plan, LOAD_WORKERS, async (orgId, i) => {
      calls.set(orgId, (calls.get(orgId) ?? 0) + 1);
      const email = `${orgId}#${i}`;
      await tenants.withTenant(orgId, async (trx, scope) => {
        // Unqualified names: only the transaction's search_path decides which schema they reach.
        const [inserted] = await trx('users').insert({ email }).returning('id');
        const result = await trx.raw(
          `select current_schema() as current,
                  (select value->>'org' from settings where key = 'owner') as owner,
                  (select email from users where id = ?) as email`,
          [inserted.id],
        );
        const row = result.rows[0] as { current: string; owner: string; email: string };
        if (
          scope.schema !== schema(orgId) ||
          row.current !== schema(orgId) ||
          row.owner !== orgId ||
          row.email !== email
        ) {
          wrong.push(
            `${orgId} call ${i}: scope ${scope.schema}, current ${row.current}, owner ${row.owner}, email ${row.email}`,
          );
        }
      });
    });
    const elapsed = Date.now() - started;
    console.info(
      `[runtime] ${engine.kind}: ${LOAD_CALLS} withTenant calls over ${LOAD_TENANTS} tenants in ${elapsed} ms (${Math.round((LOAD_CALLS * 1000) / elapsed)}/s)`,
    );

    expect(wrong).toEqual([]);
    // Every write landed in its own tenant's schema, and only there.
    for (const orgId of LOAD_ORGS) {
      const rows: { email: string }[] = await tk.knex.withSchema(schema(orgId)).table('users').select('email');
      expect(rows.filter((r) => !r.email.startsWith(`${orgId}#`))).toEqual([]);
      expect(rows).toHaveLength(calls.get(orgId) ?? 0);
    }
    const stats = tenants.stats();
    expect(stats.registryLookups).toBe(LOAD_TENANTS);
    expect(stats.cacheHits).toBe(LOAD_CALLS - LOAD_TENANTS);
    expect(stats.cached).toBe(LOAD_TENANTS);
    // The scoping never outlives a transaction: the connection is back at its own path.
    const after = await sessionPath(tk.knex);
    expect(after.setting).toBe(after.reset_val);
  });

  it('sends BEGIN with the scoping in one round trip, then the callback and COMMIT, on a cache hit', async () => {
    const tenants = createTenantClient({ knex: tk.knex });
    const orgId = 'org_load_07';
    await tenants.withTenant(orgId, async () => undefined); // fills the cache
    const sql = await statementsOf(tk.knex, async () => {
      const count = await tenants.withTenant(
        orgId,
        async (trx) => (await trx('users').count<{ count: string }[]>('* as count'))[0]!.count,
      );
      expect(Number(count)).toBeGreaterThan(0);
    });
    expect(sql).toHaveLength(3);
    expect(sql[0]).toMatch(
      /^BEGIN;\nselect concat_ws\(.*\) as session_before;\nSET LOCAL search_path TO "tid_[0-9a-f]+", public;/,
    );
    expect(sql[0]).toMatch(/from public\.tenants where schema_name = current_schema\(\)$/);
    // No bound values at all: only our derived schema name, quoted as an identifier.
    expect(sql[0]).not.toMatch(/\$\d|\?/);
    expect(sql[1]).toMatch(/count/);
    expect(sql[2]).toMatch(/^commit/i);
  });

  it("with a Knex whose transaction cannot carry the scoping, scopes after Knex's own BEGIN", async () => {
    // What a Knex that started its transactions differently would look like: a plain promise.
    const plain = new Proxy(tk.knex, {
      get(target, property, receiver) {
        if (property !== 'transaction') return Reflect.get(target, property, receiver);
        return (cb: (trx: Knex.Transaction) => Promise<unknown>) => target.transaction(cb).then((value) => value);
      },
    });
    const tenants = createTenantClient({ knex: plain });
    const orgId = 'org_load_08';
    await tenants.withTenant(orgId, async () => undefined);
    const sql = await statementsOf(tk.knex, async () => {
      const schema = await tenants.withTenant(
        orgId,
        async (trx) => (await trx.raw('select current_schema() as s')).rows[0].s,
      );
      expect(schema).toMatch(/^tid_[0-9a-f]+$/);
    });
    expect(sql.map((q) => q.split(/[;\s]/)[0]!.toUpperCase())).toEqual(['BEGIN', 'SELECT', 'SELECT', 'COMMIT']);
    expect(sql[1]).toMatch(/^select concat_ws/);
    await tk.knex('tenants').withSchema('public').where({ clerk_org_id: orgId }).update({ status: 'ARCHIVED' });
    try {
      await expect(tenants.withTenant(orgId, async () => 'served')).rejects.toBeInstanceOf(TenantArchivedError);
    } finally {
      await tk.knex('tenants').withSchema('public').where({ clerk_org_id: orgId }).update({ status: 'ACTIVE' });
    }
  });
});

/** The statements Knex sends while `fn` runs. */
async function statementsOf(knex: Knex, fn: () => Promise<void>): Promise<string[]> {
  const sql: string[] = [];
  const listen = (query: { sql: string }): void => void sql.push(query.sql);
  knex.on('query', listen);
  try {
    await fn();
  } finally {
    knex.off('query', listen);
  }
  return sql;
}

describe('withTenant isolation', () => {
  it('rolls back a callback that throws, rethrows its error and leaves the connection clean for the next tenant', async () => {
    await withSingleConnection(async (knex) => {
      const tenants = createTenantClient({ knex });
      const failure = new Error('boom');
      const thrown = await tenants
        .withTenant('org_load_01', async (trx) => {
          await trx('users').insert({ email: 'rolled-back@org_load_01' });
          // Even a session-level SET inside the transaction is undone by the rollback.
          await trx.raw('set search_path to public');
          throw failure;
        })
        .catch((e: unknown) => e);
      expect(thrown).toBe(failure);
      const path1 = await sessionPath(knex);
      expect(path1.setting).toBe(path1.reset_val);
      expect(path1.setting).not.toContain(schema('org_load_01'));
      const kept = await knex
        .withSchema(schema('org_load_01'))
        .table('users')
        .where({ email: 'rolled-back@org_load_01' });
      expect(kept).toEqual([]);

      // A failing statement aborts the transaction; the next tenant on the same connection is unaffected.
      await expect(tenants.withTenant('org_load_02', (trx) => trx.raw('select * from no_such_table'))).rejects.toThrow(
        /no_such_table/,
      );
      const owner = await tenants.withTenant(
        'org_load_03',
        async (trx) => (await trx('settings').where({ key: 'owner' }).first()).value.org,
      );
      expect(owner).toBe('org_load_03');
      const path2 = await sessionPath(knex);
      expect(path2.setting).toBe(path2.reset_val);
    });
  });

  it('a transaction handle kept after withTenant returns fails, and never runs in the next transaction on its connection', async () => {
    await withSingleConnection(async (knex) => {
      const tenants = createTenantClient({ knex });
      let kept: Knex.Transaction | undefined;
      await tenants.withTenant('org_load_04', async (trx) => {
        kept = trx;
      });
      const stale = kept!;
      // The only connection is now in org_load_05's transaction: the stale handle must not reach it.
      const inside = await tenants.withTenant('org_load_05', async (trx) => {
        const write = await stale('users')
          .insert({ email: 'stale@org_load_04' })
          .then(
            () => undefined,
            (e: unknown) => e,
          );
        const read = await stale.raw('select current_schema() as current').then(
          () => undefined,
          (e: unknown) => e,
        );
        return { write, read, current: (await trx.raw('select current_schema() as current')).rows[0].current };
      });
      expect(inside.write).toBeInstanceOf(Error);
      expect((inside.write as Error).message).toMatch(/Transaction query already complete/);
      expect((inside.read as Error).message).toMatch(/Transaction query already complete/);
      expect(inside.current).toBe(schema('org_load_05'));
      for (const orgId of ['org_load_04', 'org_load_05'])
        expect(await knex.withSchema(schema(orgId)).table('users').where({ email: 'stale@org_load_04' })).toEqual([]);
    });
  });

  it('refuses unknown, malformed, PROVISIONING and FAILED tenants with typed errors, without running the callback', async () => {
    const tenants = createTenantClient({ knex: tk.knex });
    let ran = 0;
    const cb = async (): Promise<void> => void ran++;
    const unknown = await expectRejection(tenants.withTenant('org_nobody', cb), TenantNotFoundError);
    expect(unknown).toBeInstanceOf(TenantAccessError);
    expect(unknown.httpStatus).toBe(404);
    expect(unknown.code).toBe('E_TENANT_NOT_FOUND');
    expect(
      (await expectRejection(tenants.withTenant("x'; drop schema public; --", cb), TenantNotFoundError)).message,
    ).toMatch(/malformed/);

    await tk.knex('tenants').insert([
      { clerk_org_id: 'org_halfway', schema_name: 'tid_0a1f0a1f0a', status: 'PROVISIONING' },
      { clerk_org_id: 'org_broken', schema_name: 'tid_0b0b0b0b0b', status: 'FAILED', error: 'it broke' },
    ]);
    const halfway = await expectRejection(tenants.withTenant('org_halfway', cb), TenantUnavailableError);
    expect(halfway).toMatchObject({
      httpStatus: 503,
      reason: 'provisioning',
      status: 'PROVISIONING',
      schema: 'tid_0a1f0a1f0a',
      orgId: 'org_halfway',
    });
    const broken = await expectRejection(tenants.withTenant('org_broken', cb), TenantUnavailableError);
    expect(broken).toMatchObject({ httpStatus: 503, reason: 'failed', status: 'FAILED' });
    expect(ran).toBe(0);

    // Refusals are not cached: the tenant is served as soon as its provisioning finishes.
    expect(tenants.stats().cached).toBe(0);
    await tk.knex.raw('create schema tid_0a1f0a1f0a');
    await tk.knex('tenants').where({ clerk_org_id: 'org_halfway' }).update({ status: 'ACTIVE' });
    await tenants.withTenant('org_halfway', cb);
    expect(ran).toBe(1);
  });

  it('never runs a callback against a missing schema, cached or not (PostgreSQL would fall through to public)', async () => {
    const [orgId] = ['org_vanishing'];
    await provisionAll([orgId]);
    const warm = createTenantClient({ knex: tk.knex });
    await warm.withTenant(orgId, async () => undefined);
    // The trap: a public table with the tenant's table name, which the callback would reach if the path fell through.
    await tk.knex.raw('create table public.users (id serial primary key, email text)');
    try {
      await tk.knex.raw('drop schema ?? cascade', [schema(orgId)]);
      let ran = 0;
      const write = async (trx: Knex.Transaction): Promise<void> => {
        ran++;
        await trx('users').insert({ email: 'leaked@public' });
      };
      const cached = await expectRejection(warm.withTenant(orgId, write), TenantUnavailableError);
      expect(cached).toMatchObject({
        reason: 'schema-missing',
        status: 'ACTIVE',
        schema: schema(orgId),
        httpStatus: 503,
      });
      const cold = await expectRejection(
        createTenantClient({ knex: tk.knex }).withTenant(orgId, write),
        TenantUnavailableError,
      );
      expect(cold.reason).toBe('schema-missing');
      expect(ran).toBe(0);
      expect(await tk.knex.withSchema('public').table('users').count<{ count: string }[]>('* as count')).toEqual([
        { count: '0' },
      ]);
    } finally {
      await tk.knex.raw('drop table public.users');
    }
  });
});

describe('the lookup cache', () => {
  it('notices a tenant that failed or was deprovisioned within its TTL, and never routes an org to a schema registered to another', async () => {
    const tenants = createTenantClient({ knex: tk.knex, cache: { ttlMs: 3_600_000 } });
    const [a, b, c] = ['org_cache_a', 'org_cache_b', 'org_cache_c'];
    await provisionAll([a, b, c]);
    for (const orgId of [a, b, c]) await tenants.withTenant(orgId, async () => undefined);
    expect(tenants.stats().cached).toBe(3);
    let ran = 0;
    const cb = async (trx: Knex.Transaction): Promise<string> => {
      ran++;
      return (await trx.raw('select current_schema() as s')).rows[0].s;
    };

    // Failed by hand: refused at once, then served again once ACTIVE.
    await tk.knex('tenants').where({ clerk_org_id: a }).update({ status: 'FAILED' });
    expect((await expectRejection(tenants.withTenant(a, cb), TenantUnavailableError)).reason).toBe('failed');
    await tk.knex('tenants').where({ clerk_org_id: a }).update({ status: 'ACTIVE' });
    expect(await tenants.withTenant(a, cb)).toBe(schema(a));

    // Deprovisioned: the row and the schema are gone.
    await tk.knex('tenants').where({ clerk_org_id: b }).delete();
    await tk.knex.raw('drop schema ?? cascade', [schema(b)]);
    await expectRejection(tenants.withTenant(b, cb), TenantNotFoundError);

    // C's schema handed to another org by hand: C is no longer served from it, the new owner is.
    await tk.knex('tenants').where({ clerk_org_id: c }).update({ clerk_org_id: 'org_cache_new_owner' });
    const ranBefore = ran;
    await expectRejection(tenants.withTenant(c, cb), TenantNotFoundError);
    expect(ran).toBe(ranBefore);
    expect(await tenants.withTenant('org_cache_new_owner', cb)).toBe(schema(c));

    // A row re-pointed to another schema is followed (one fresh lookup), not refused.
    await tk.knex('tenants').where({ clerk_org_id: 'org_cache_new_owner' }).update({ clerk_org_id: c });
    await tk.knex('tenants').where({ clerk_org_id: a }).update({ schema_name: 'tid_0c0c0c0c0c0c' });
    await tk.knex.raw('alter schema ?? rename to tid_0c0c0c0c0c0c', [schema(a)]);
    expect(await tenants.withTenant(a, cb)).toBe('tid_0c0c0c0c0c0c');
  });

  it('expires entries after the TTL and keeps at most `max` tenants, least recently used out first', async () => {
    let now = 1_000_000;
    const tenants = createTenantClient({ knex: tk.knex, cache: { max: 3, ttlMs: 1000 }, clock: () => now });
    const use = (i: number): Promise<void> => tenants.withTenant(`org_load_1${i}`, async () => undefined);
    const lookups = (): number => tenants.stats().registryLookups;

    await use(0);
    await use(0);
    expect(lookups()).toBe(1);
    now += 999;
    await use(0);
    expect(lookups()).toBe(1);
    now += 1000; // the entry was refreshed only by its lookup, 1999 ms ago
    await use(0);
    expect(lookups()).toBe(2);

    await use(1);
    await use(2);
    await use(0); // 0 is now the most recently used; 1 the least
    await use(3);
    expect(tenants.stats().cached).toBe(3);
    const before = lookups();
    await use(0);
    await use(2);
    await use(3);
    expect(lookups()).toBe(before);
    await use(1);
    expect(lookups()).toBe(before + 1);

    tenants.invalidate('org_load_13');
    await use(3);
    expect(lookups()).toBe(before + 2);
  });

  it('validates its options in one pass and names a missing registry', async () => {
    const error = await expectRejection(
      (async () =>
        createTenantClient({ knex: tk.knex, cache: { max: 0, ttlMs: -1 }, lockTimeoutMs: 1.5, lazyMigrate: true }))(),
      ConfigError,
    );
    expect(error.problems).toHaveLength(4);
    expect(error.problems.join('\n')).toMatch(
      /cache\.max[\s\S]*cache\.ttlMs[\s\S]*lockTimeoutMs[\s\S]*lazyMigrate needs migrations/,
    );

    await tk.knex.raw('alter table public.tenants rename to tenants_away');
    try {
      await expectRejection(
        createTenantClient({ knex: tk.knex }).withTenant('org_load_00', async () => undefined),
        RegistryMissingError,
      );
    } finally {
      await tk.knex.raw('alter table public.tenants_away rename to tenants');
    }
  });
});

describe('lazy migration', () => {
  it('runs once for concurrent first requests, before their callbacks, in this process and across processes', async () => {
    const [one, two] = ['org_lazy_one', 'org_lazy_two'];
    await provisionAll([one, two]);
    let ups = 0;
    const notes = memoryMigration('003_notes.ts', async (knex) => {
      ups++;
      await knex.schema.createTable('notes', (t) => {
        t.increments('id');
        t.text('body');
      });
    });
    const source = sourceOf([...base, notes]);
    const events: LazyMigrationEvent[] = [];
    const tenants = createTenantClient({
      knex: tk.knex,
      migrations: source,
      onLazyMigration: (e) => void events.push(e),
    });

    const write = (_orgId: string, body: string) => (trx: Knex.Transaction) =>
      trx('notes').insert({ body }).returning('id');
    const results = await Promise.all([
      tenants.withTenant(one, write(one, 'first')),
      tenants.withTenant(one, write(one, 'second')),
    ]);
    expect(results.flat()).toHaveLength(2);
    expect(ups).toBe(1);
    expect(tenants.stats().lazyMigrationRuns).toBe(1);
    expect(events).toEqual([
      expect.objectContaining({
        orgId: one,
        schema: schema(one),
        outcome: 'migrated',
        migrations: ['003_notes.ts'],
        error: null,
      }),
    ]);
    const tracked = await tk.knex.withSchema(schema(one)).table('knex_migrations_tenant').select('name').orderBy('id');
    expect(tracked.map((r) => r.name)).toEqual(['001_users.ts', '002_settings.ts', '003_notes.ts']);

    // Later requests do not run it again.
    await tenants.withTenant(one, write(one, 'third'));
    expect(tenants.stats().lazyMigrationRuns).toBe(1);

    // Two processes (two clients) racing on a tenant: the schema lock lets one migrate, the other finds it done.
    const other: LazyMigrationEvent[] = [];
    const second = createTenantClient({
      knex: tk.knex,
      migrations: source,
      onLazyMigration: (e) => void other.push(e),
    });
    await Promise.all([tenants.withTenant(two, write(two, 'a')), second.withTenant(two, write(two, 'b'))]);
    expect(ups).toBe(2); // one for each tenant
    const outcomes = [...events.slice(1), ...other].map((e) => e.outcome).sort();
    expect(outcomes).toEqual(['migrated', 'up-to-date']);
    expect(await tk.knex.withSchema(schema(two)).table('notes').count<{ count: string }[]>('* as count')).toEqual([
      { count: '2' },
    ]);
  });

  it('reports a failed lazy migration, serves the tenant at its current version and retries after the TTL', async () => {
    const orgId = 'org_lazy_broken';
    await provisionAll([orgId]);
    let now = 5_000_000;
    let attempts = 0;
    const broken = memoryMigration('005_broken.ts', async (knex) => {
      attempts++;
      await knex.schema.createTable('half_done', (t) => t.increments('id'));
      throw new Error('this migration is broken');
    });
    const failures: LazyMigrationEvent[] = [];
    const tenants = createTenantClient({
      knex: tk.knex,
      migrations: sourceOf([...base, broken]),
      cache: { ttlMs: 60_000 },
      clock: () => now,
      onLazyMigrationError: (e) => void failures.push(e),
    });
    const read = (trx: Knex.Transaction): Promise<string | null> =>
      trx
        .raw("select to_regclass('half_done')::text as t, to_regclass('users')::text as u")
        .then((r) => r.rows[0].t ?? r.rows[0].u);

    expect(await tenants.withTenant(orgId, read)).toBe('users'); // served, at the version it has
    expect(failures).toEqual([
      expect.objectContaining({
        orgId,
        outcome: 'failed',
        migrations: [],
        error: expect.objectContaining({ migration: '005_broken.ts' }),
      }),
    ]);
    expect(failures[0]!.error!.message).toMatch(/this migration is broken/);
    const row = await tk.knex('tenants').where({ clerk_org_id: orgId }).first();
    expect(row.last_migration_error).toMatch(/005_broken\.ts.*this migration is broken/);

    await tenants.withTenant(orgId, read);
    expect(attempts).toBe(1);
    now += 60_001;
    await tenants.withTenant(orgId, read);
    expect(attempts).toBe(2);
    expect(failures).toHaveLength(2);
    expect(tenants.stats()).toMatchObject({ lazyMigrationRuns: 2, lazyMigrationFailures: 2 });

    // Once the broken file is gone (a fixed deploy), the next process's run clears the recorded error.
    const fixed = createTenantClient({
      knex: tk.knex,
      migrations: sourceOf(base),
      onLazyMigrationError: (e) => void failures.push(e),
    });
    await fixed.withTenant(orgId, read);
    expect(failures).toHaveLength(2);
    expect((await tk.knex('tenants').where({ clerk_org_id: orgId }).first()).last_migration_error).toBeNull();
  });
});

describe('examples/clerk-webhook.ts', () => {
  const secret = webhookSecret();

  const signed = (payload: unknown, key = secret) => signedWebhook(payload, key);

  async function serve(handler: Handler, cb: (url: string) => Promise<void>): Promise<void> {
    const server = http.createServer((req, res) => void handler(req, res).catch(() => res.writeHead(500).end()));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      await cb(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  }

  it('provisions on a signed organization.created and refuses unsigned requests', async () => {
    const logs: string[] = [];
    const handler = clerkWebhookHandler({ toolkit: tk, signingSecret: secret, log: (l) => void logs.push(l) });
    await serve(handler, async (url) => {
      const created = signed({
        type: 'organization.created',
        object: 'event',
        data: { id: 'org_hook_1', object: 'organization', name: 'Hook One' },
      });
      const forged = signed(
        { type: 'organization.created', object: 'event', data: { id: 'org_hook_forged', object: 'organization' } },
        webhookSecret(),
      );
      const other = signed({ type: 'user.created', object: 'event', data: { id: 'user_1', object: 'user' } });

      const bad = await fetch(`${url}/webhooks/clerk`, { method: 'POST', ...forged });
      expect(bad.status).toBe(400);
      const unsigned = await fetch(`${url}/webhooks/clerk`, {
        method: 'POST',
        body: created.body,
        headers: { 'content-type': 'application/json' },
      });
      expect(unsigned.status).toBe(400);
      expect(await tk.knex('tenants').whereIn('clerk_org_id', ['org_hook_1', 'org_hook_forged'])).toEqual([]);

      const ok = await fetch(`${url}/webhooks/clerk`, { method: 'POST', ...created });
      expect(ok.status).toBe(200);
      expect(await ok.json()).toMatchObject({ orgId: 'org_hook_1', outcome: 'provisioned' });
      // Clerk delivers at least once: a redelivery is answered without provisioning again.
      const again = await fetch(`${url}/webhooks/clerk`, { method: 'POST', ...created });
      expect(await again.json()).toMatchObject({ orgId: 'org_hook_1', outcome: 'already-active' });
      expect((await fetch(`${url}/webhooks/clerk`, { method: 'POST', ...other })).status).toBe(200);
    });
    const row = await tk.knex('tenants').where({ clerk_org_id: 'org_hook_1' }).first();
    expect(row.status).toBe('ACTIVE');
    expect(logs).toEqual([]);
  });

  it('serves tenant requests through withTenant and maps its errors to 404 and 503', async () => {
    // The example reads `org_settings`, a table of the shipped tenant migrations (which need pgvector): give it here.
    const orgSettings = memoryMigration('x01_org_settings.ts', async (knex) => {
      await knex.schema.createTable('org_settings', (t) => {
        t.string('key').primary();
        t.jsonb('value').notNullable();
      });
    });
    const appKit = createToolkit({ knex: tk.knex, config: tk.config, sources: { tenant: sourceOf([orgSettings]) } });
    await provisionAll(['org_app'], appKit);
    await tk.knex
      .withSchema(schema('org_app'))
      .table('org_settings')
      .insert({ key: 'theme', value: JSON.stringify('dark') });
    await tk
      .knex('tenants')
      .insert({ clerk_org_id: 'org_app_pending', schema_name: 'tid_app_pending', status: 'PROVISIONING' });

    const tenants: TenantClient = createTenantClient({ knex: tk.knex });
    // Stands in for Clerk's session verification, which needs Clerk's servers.
    const handler = settingsHandler({ tenants, orgOf: async (request) => request.headers.get('x-test-org') });
    await serve(handler, async (url) => {
      const get = (org?: string): Promise<Response> =>
        fetch(`${url}/api/settings`, { headers: org ? { 'x-test-org': org } : {} });
      const ok = await get('org_app');
      expect(ok.status).toBe(200);
      expect(await ok.json()).toEqual({ settings: [{ key: 'theme', value: 'dark' }] });
      expect((await get('org_nobody')).status).toBe(404);
      expect((await get('org_app_pending')).status).toBe(503);
      expect((await get()).status).toBe(401);
    });
  });
});
