import type { Knex } from 'knex';
import { DEFAULTS, parseDuration } from '../config/config.ts';
import { discardConnection } from '../db/dedicated.ts';
import { quoteIdent, tenantSearchPath } from '../db/identifiers.ts';
import { SQLSTATE, sqlState } from '../db/pg-errors.ts';
import { ConfigError, messageOf, RegistryMissingError } from '../errors.ts';
import type { MigrationSource } from '../migrations/source.ts';
import { isTenantSchemaName, validateOrgId } from '../tenants/naming.ts';
import { findTenantByOrgId } from '../tenants/registry.ts';
import { tenantRoleName } from '../tenants/roles.ts';
import { ExpiringLru } from './cache.ts';
import { notServedError, TenantNotFoundError, TenantUnavailableError } from './errors.ts';
import {
  checkSessionAtCommit,
  isRoleSwitchFailure,
  SESSION_BEFORE_COLUMN,
  type SessionLeakEvent,
  TenantRoleError,
  warnSessionLeakOnce,
} from './isolation.ts';
import { type LazyMigrationEvent, LazyMigrator } from './lazy.ts';

export type { LazyMigrationEvent, SessionLeakEvent };

/** How `createTenantClient` serves tenants: the shared pool, lazy migration, the lookup cache, roles and the session check. */
export interface TenantClientOptions {
  /** The application's one shared pool. The client never closes it. */
  readonly knex: Knex;
  /** Tenant migrations for lazy migration, e.g. `folderSource('tenant-migrations')`. */
  readonly migrations?: MigrationSource;
  /** Bring each tenant up to date on its first use in this process (default: true when `migrations` is given). */
  readonly lazyMigrate?: boolean;
  /** Registry lookups kept in memory: at most `max` tenants (default 1000), each for `ttlMs` (default 60 s). */
  readonly cache?: { readonly max?: number; readonly ttlMs?: number };
  /** `lock_timeout` inside lazy migration transactions, in ms (default 10 s; 0 waits forever). */
  readonly lockTimeoutMs?: number;
  /** A lazy migration failed; the tenant is served at its current version. Default: one line on `console.warn`. */
  readonly onLazyMigrationError?: (event: LazyMigrationEvent) => void;
  /** Every lazy migration run, successful or not (for logs and metrics). */
  readonly onLazyMigration?: (event: LazyMigrationEvent) => void;
  /** Milliseconds clock for the cache's TTL (default `Date.now`); tests hand in one they can move. */
  readonly clock?: () => number;
  /**
   * Run each transaction as the tenant's own role (`SET LOCAL ROLE "<schema>_app"`), created by
   * the provisioner with `TENANT_ROLES=on`: a query naming another tenant's schema then fails with
   * `permission denied` in PostgreSQL itself. Default false. See docs/isolation.md.
   */
  readonly tenantRoles?: boolean;
  /**
   * Check that the callback left no session-level setting behind (a `SET search_path` or `SET
   * ROLE` without LOCAL): read in the same round trips as the scoping and the COMMIT; settings
   * found changed are set back before the connection returns to the pool. Default true.
   */
  readonly checkSession?: boolean;
  /** A callback changed session settings (they were set back). Default: one `console.warn` per process. */
  readonly onSessionLeak?: (event: SessionLeakEvent) => void;
  /**
   * Tenants on several servers (`TENANT_SERVERS`, docs/servers.md): the application's pool for
   * each server, by its name. `knex` is the main server's (the registry's); each tenant's
   * transactions run on its server's pool, read from the registry and cached with the lookup.
   */
  readonly servers?: Readonly<Record<string, Knex>>;
}

/** What the callback is told about the tenant it runs for. */
export interface TenantScope {
  readonly orgId: string;
  readonly schema: string;
}

/** Counters of a tenant client since it was created (`stats()`). */
export interface TenantClientStats {
  /** Tenants in the lookup cache now. */
  readonly cached: number;
  /** Calls that made no registry lookup of their own (served from the cache, or joined a lookup in flight). */
  readonly cacheHits: number;
  /** Registry lookups made (cache misses, expired entries and re-checks after a stale entry). */
  readonly registryLookups: number;
  readonly lazyMigrationRuns: number;
  readonly lazyMigrationFailures: number;
  /** Callbacks that left a session-level setting behind (set back each time). */
  readonly sessionLeaks: number;
}

/** Tenant-scoped access for an application: create one per process over its shared pool. */
export interface TenantClient {
  /**
   * Runs `cb` in a transaction whose search_path is the tenant's schema then `public`, for that
   * transaction only, and commits (or rolls back if `cb` throws, rethrowing its error). Throws
   * TenantNotFoundError, TenantArchivedError (ARCHIVED or DELETED) or TenantUnavailableError,
   * without running `cb`, for an org that is not registered, not ACTIVE, or whose schema is
   * missing. Do not call it again inside `cb`: on a pool of one connection the inner call would
   * wait for the outer one forever.
   */
  withTenant<T>(orgId: string, cb: (trx: Knex.Transaction, tenant: TenantScope) => Promise<T>): Promise<T>;
  /** Drops one org (or every org) from the lookup cache, e.g. from an `organization.deleted` webhook. */
  invalidate(orgId?: string): void;
  stats(): TenantClientStats;
}

interface CachedTenant extends TenantScope {
  readonly lastMigrationError: string | null;
  /** Its server's name; null for the main server (whose pool is `knex`). */
  readonly server: string | null;
  /** The pool its transactions run on. */
  readonly pool: Knex;
  /** What the callback is told, built once per lookup (frozen: every call shares it). */
  readonly scope: TenantScope;
  /** BEGIN and the scoping statements (`scopeSql`), built once per lookup. */
  readonly scoping: string;
}

const DEFAULT_CACHE_MAX = 1000;
const DEFAULT_CACHE_TTL_MS = 60_000;

/**
 * BEGIN and the scoping of a tenant's transaction, as one simple-protocol query: one round trip
 * where Knex would send BEGIN alone and then a scoping statement. Its statements, in order:
 * 1. `BEGIN`;
 * 2. with the session check, the session's watched settings before anything changes them;
 * 3. `SET LOCAL search_path` to the tenant's schema, then `public`, for this transaction only;
 * 4. the registry row of the schema now first on the path (`current_schema()`: the tenant's
 *    schema, or `public` when it does not exist, since PostgreSQL skips a missing schema on the
 *    path; no row then), so that a cached entry never sends an org to a schema that is gone, no
 *    longer registered to it, or no longer ACTIVE (an archive is refused at once, whatever the
 *    cache's TTL); for a tenant on another server only the schema, its status being read on the
 *    main server at the same time (`REMOTE_STATUS_SQL`). Measured server time of the registry
 *    read: about 35 µs (a join on a `current_schema()` subquery cost about 20 µs more);
 * 5. with tenant roles, `SET LOCAL ROLE` to the tenant's role: after the registry read, which
 *    that role cannot make.
 * A simple query carries no bound values, so this one holds none: only the tenant's schema and
 * role names, which we derive (tid_ + hex, checked at lookup) and quote as identifiers.
 */
function scopeSql(schema: string, options: { registry: boolean; tenantRoles: boolean; checkSession: boolean }): string {
  const statements = ['BEGIN'];
  if (options.checkSession) statements.push(`select ${SESSION_BEFORE_COLUMN}`);
  statements.push(`SET LOCAL search_path TO ${tenantSearchPath(schema)}`);
  statements.push(
    options.registry
      ? 'select current_schema() as scoped, clerk_org_id as org_id, status from public.tenants where schema_name = current_schema()'
      : 'select current_schema() as scoped',
  );
  if (options.tenantRoles) statements.push(`SET LOCAL ROLE ${quoteIdent(tenantRoleName(schema))}`);
  return statements.join(';\n');
}

/** The scoping statements without their BEGIN: for a Knex whose transactions cannot carry it (see `run`). */
const AFTER_BEGIN = 'BEGIN;\n'.length;

/** What the scoping query read: the session's settings before it, the schema it scoped to, the registry row. */
interface Scoped {
  readonly sessionBefore: string | undefined;
  readonly scoped: string | undefined;
  readonly orgId: string | null;
  readonly status: string | null;
}

type QueryResult = { rows?: Record<string, unknown>[] };

/** Reads the scoping query's results (one per statement, or one when there is a single statement). */
function scopedOf(response: unknown): Scoped {
  const results = (Array.isArray(response) ? response : [response]) as QueryResult[];
  const row = (column: string) => results.find((r) => r?.rows?.[0] && column in r.rows[0])?.rows?.[0];
  const before = row('session_before');
  const scope = row('scoped');
  return {
    sessionBefore: before?.session_before as string | undefined,
    scoped: scope?.scoped as string | undefined,
    orgId: (scope?.org_id as string | null | undefined) ?? null,
    status: (scope?.status as string | null | undefined) ?? null,
  };
}

/** The registry row's status, counted only while it names this schema on this server. */
const REMOTE_STATUS_SQL = `select case when schema_name = ? and server = ? then status end as status
  from public.tenants where clerk_org_id = ?`;

/**
 * What Knex's `transaction()` returns, as far as `run` uses it: a promise whose `begin` (sending
 * `BEGIN;`) is called once a connection is acquired, after the current synchronous code.
 */
interface KnexTransactionStart {
  begin?: (connection: unknown) => Promise<unknown>;
  trxClient?: { query(connection: unknown, query: { sql: string }): Promise<{ response?: unknown }> };
}

/**
 * The cached entry no longer matches the registry: look the org up again. `ifStill` is the
 * error to throw if the fresh look finds the same trouble (a role switch that fails for a tenant
 * the registry still says is ACTIVE).
 */
class StaleEntry extends Error {
  readonly ifStill: Error | undefined;
  constructor(ifStill?: Error) {
    super('stale registry entry');
    this.ifStill = ifStill;
  }
}

/**
 * Creates the tenant-aware client. Per `withTenant`: on a cache hit, three round trips (BEGIN with
 * the scoping, COMMIT, plus the callback's own); a miss adds one registry lookup.
 * Throws ConfigError listing every invalid option.
 */
export function createTenantClient(options: TenantClientOptions): TenantClient {
  const settings = validate(options);
  const { knex } = options;
  const now = options.clock ?? Date.now;
  const cache = new ExpiringLru<string, CachedTenant>(settings.max, now);
  const lookups = new Map<string, Promise<CachedTenant>>();
  const counters = { hits: 0, lookups: 0, leaks: 0 };
  const servers = options.servers;
  const onSessionLeak = options.onSessionLeak ?? warnSessionLeakOnce;
  const lazy =
    settings.lazyMigrate && options.migrations
      ? new LazyMigrator({
          knex,
          source: options.migrations,
          settings: { lockTimeoutMs: settings.lockTimeoutMs },
          max: settings.max,
          retryAfterMs: settings.ttlMs,
          now,
          onError: options.onLazyMigrationError ?? warnLazyFailure,
          onRun: options.onLazyMigration,
        })
      : undefined;

  const lookup = async (orgId: string): Promise<CachedTenant> => {
    counters.lookups++;
    const row = await findTenantByOrgId(knex, orgId, { withServer: servers !== undefined }).catch((error: unknown) => {
      throw registryError(error);
    });
    if (!row) throw new TenantNotFoundError(orgId);
    if (row.status !== 'ACTIVE') throw notServedError(orgId, row.schema, row.status);
    // A hand-edited row pointing at `public` (or anything not derived) is never routed to.
    if (!isTenantSchemaName(row.schema))
      throw new TenantUnavailableError(orgId, row.schema, row.status, 'schema-invalid');
    const server = row.server ?? null;
    const pool = server === null ? knex : servers?.[server];
    if (pool === undefined) throw new TenantUnavailableError(orgId, row.schema, server!, 'server-unknown');
    // Only ACTIVE tenants are cached: an org being provisioned must be served as soon as it is ready.
    const tenant: CachedTenant = {
      orgId,
      schema: row.schema,
      lastMigrationError: row.lastMigrationError,
      server,
      pool,
      scope: Object.freeze({ orgId, schema: row.schema }),
      scoping: scopeSql(row.schema, {
        registry: server === null,
        tenantRoles: settings.tenantRoles,
        checkSession: settings.checkSession,
      }),
    };
    cache.set(orgId, tenant, settings.ttlMs);
    return tenant;
  };

  const resolve = (orgId: string, fresh: boolean): Promise<CachedTenant> => {
    if (!fresh) {
      const hit = cache.get(orgId);
      if (hit) {
        counters.hits++;
        return Promise.resolve(hit);
      }
      // Concurrent misses for one org share one lookup (counted as hits: they made none of their own).
      const pending = lookups.get(orgId);
      if (pending) {
        counters.hits++;
        return pending;
      }
    }
    const pending = lookup(orgId).finally(() => {
      if (lookups.get(orgId) === pending) lookups.delete(orgId);
    });
    lookups.set(orgId, pending);
    return pending;
  };

  /**
   * Checks what the scoping read (see `scopeSql`); returns the session's watched settings before
   * it (with the session check). Throws StaleEntry when the registry no longer matches the cache.
   */
  const check = async (tenant: CachedTenant, read: Scoped, registry: Promise<string | null> | undefined) => {
    // On the main server, the registry row of the schema counts only while it belongs to this org.
    const status =
      registry === undefined
        ? read.orgId === tenant.orgId
          ? read.status
          : null
        : await registry.catch((error: unknown) => {
            throw registryError(error);
          });
    if (read.scoped !== tenant.schema) {
      // No registry row for the schema first on the path: the registry changed, or the schema is
      // gone (the path fell through to public). A fresh lookup says which: an org archived,
      // deleted or moved to another schema meanwhile; if it still says ACTIVE here, the schema is missing.
      cache.delete(tenant.orgId);
      throw new StaleEntry(
        new TenantUnavailableError(tenant.orgId, tenant.schema, status ?? 'ACTIVE', 'schema-missing'),
      );
    }
    // No row, or a row naming another schema (or server) now: look again.
    if (status === null) {
      cache.delete(tenant.orgId);
      throw new StaleEntry();
    }
    if (status !== 'ACTIVE') {
      cache.delete(tenant.orgId);
      // ARCHIVED or DELETED since it was cached: TenantArchivedError at once, whatever the cache's TTL.
      throw notServedError(tenant.orgId, tenant.schema, status);
    }
    return read.sessionBefore;
  };

  /** A failed scoping: a role that cannot be switched to says so after one fresh look; others as they are. */
  const scopingError = (tenant: CachedTenant, error: unknown): unknown => {
    const role = settings.tenantRoles ? tenantRoleName(tenant.schema) : undefined;
    if (!role || !isRoleSwitchFailure(error, role)) return registryError(error);
    // No role: not made yet (`tenants:roles`), or dropped with its tenant since it was cached.
    // The registry says which: look again, and report a missing role only for a tenant it serves.
    cache.delete(tenant.orgId);
    return new StaleEntry(new TenantRoleError(tenant.orgId, tenant.schema, role, error));
  };

  /** On the main server, for a tenant elsewhere: its registry status, read while its transaction begins. */
  const remoteStatus = async (tenant: CachedTenant): Promise<string | null> => {
    const result = await knex.raw(REMOTE_STATUS_SQL, [tenant.schema, tenant.server!, tenant.orgId]);
    return (result.rows[0] as { status: string | null } | undefined)?.status ?? null;
  };

  /**
   * One transaction scoped to the tenant; session settings `cb` changed are set back before the
   * connection is reused. Knex sends a transaction's `BEGIN;` through its `begin` method once a
   * connection is acquired, after this synchronous code: that method is replaced, for this
   * transaction only, by one that sends BEGIN with the scoping (one round trip, not two). If a
   * Knex ever started differently, the scoping runs after its BEGIN, as a statement of its own.
   */
  const run = async <T>(
    tenant: CachedTenant,
    cb: (trx: Knex.Transaction, tenant: TenantScope) => Promise<T>,
  ): Promise<T> => {
    const registry = tenant.server === null ? undefined : remoteStatus(tenant);
    registry?.catch(() => undefined); // awaited in `check`; this only keeps an early failure from going unhandled
    let response: unknown;
    let failedScoping: unknown;
    const transaction = tenant.pool.transaction(async (trx) => {
      if (response === undefined) {
        try {
          response = await trx.raw(tenant.scoping.slice(AFTER_BEGIN));
        } catch (error) {
          throw scopingError(tenant, error);
        }
      }
      const before = await check(tenant, scopedOf(response), registry);
      if (before !== undefined)
        checkSessionAtCommit(trx, before, (changed) => {
          counters.leaks++;
          onSessionLeak({ ...tenant.scope, changed });
        });
      return cb(trx, tenant.scope);
    });
    const start = transaction as unknown as KnexTransactionStart;
    if (typeof start.begin === 'function') {
      start.begin = async (connection) => {
        try {
          response = (await start.trxClient!.query(connection, { sql: tenant.scoping })).response;
        } catch (error) {
          failedScoping = error;
          // A failed statement after BEGIN leaves the transaction open and aborted: end it before
          // Knex hands the connection back to the pool (it only rolls back what it began itself).
          await start.trxClient!.query(connection, { sql: 'ROLLBACK' }).catch(() => {
            discardConnection(connection, 'the tenant scoping failed and could not be rolled back');
          });
          throw error;
        }
      };
    }
    try {
      return await transaction;
    } catch (error) {
      throw error === failedScoping ? scopingError(tenant, error) : error;
    }
  };

  return {
    async withTenant<T>(orgId: string, cb: (trx: Knex.Transaction, tenant: TenantScope) => Promise<T>): Promise<T> {
      try {
        validateOrgId(orgId);
      } catch (error) {
        throw new TenantNotFoundError(String(orgId), `the org id is malformed (${messageOf(error)})`);
      }
      for (let attempt = 0; ; attempt++) {
        const tenant = await resolve(orgId, attempt > 0);
        // Before the transaction: the migration needs a connection of its own, and on a pool
        // of one, holding ours while waiting for it would never end.
        if (lazy) await lazy.ensure(tenant);
        try {
          return await run(tenant, cb);
        } catch (error) {
          if (!(error instanceof StaleEntry)) throw error;
          // The registry changed under the cache (row deleted or re-pointed): one fresh look says
          // what is true now; a second mismatch means it is changing as we look.
          if (attempt > 0)
            throw (
              error.ifStill ?? new TenantNotFoundError(orgId, 'its registry row changed while it was being looked up')
            );
        }
      }
    },
    invalidate(orgId?: string): void {
      if (orgId === undefined) {
        cache.clear();
        lazy?.clear();
      } else {
        cache.delete(orgId);
      }
    },
    stats: () => ({
      cached: cache.size,
      cacheHits: counters.hits,
      registryLookups: counters.lookups,
      lazyMigrationRuns: lazy?.runs ?? 0,
      lazyMigrationFailures: lazy?.failures ?? 0,
      sessionLeaks: counters.leaks,
    }),
  };
}

/** A missing `public.tenants` is the operator's mistake (master migrations not run): say so. */
function registryError(error: unknown): unknown {
  return sqlState(error) === SQLSTATE.UNDEFINED_TABLE && /\btenants\b/.test(messageOf(error))
    ? new RegistryMissingError()
    : error;
}

interface Settings {
  readonly max: number;
  readonly ttlMs: number;
  readonly lockTimeoutMs: number;
  readonly lazyMigrate: boolean;
  readonly tenantRoles: boolean;
  readonly checkSession: boolean;
}

/** Checks every option in one pass and reports all problems together. */
function validate(options: TenantClientOptions): Settings {
  const problems: string[] = [];
  if (!options || typeof (options.knex as unknown) !== 'function')
    problems.push("knex: pass the application's Knex instance");
  const max = options?.cache?.max ?? DEFAULT_CACHE_MAX;
  if (!Number.isInteger(max) || max < 1)
    problems.push(`cache.max must be a whole number of at least 1, got ${String(max)}`);
  const ttlMs = options?.cache?.ttlMs ?? DEFAULT_CACHE_TTL_MS;
  if (typeof ttlMs !== 'number' || Number.isNaN(ttlMs) || ttlMs < 0)
    problems.push(`cache.ttlMs must be 0 or more milliseconds, got ${String(ttlMs)}`);
  const lockTimeoutMs = options?.lockTimeoutMs ?? parseDuration(DEFAULTS.lockTimeout)!;
  if (!Number.isInteger(lockTimeoutMs) || lockTimeoutMs < 0)
    problems.push(`lockTimeoutMs must be a whole number of 0 or more, got ${String(lockTimeoutMs)}`);
  const lazyMigrate = options?.lazyMigrate ?? options?.migrations !== undefined;
  if (lazyMigrate && options?.migrations === undefined)
    problems.push("lazyMigrate needs migrations (e.g. folderSource('tenant-migrations'))");
  const tenantRoles = options?.tenantRoles ?? false;
  if (typeof tenantRoles !== 'boolean') problems.push(`tenantRoles must be true or false, got ${String(tenantRoles)}`);
  const checkSession = options?.checkSession ?? true;
  if (typeof checkSession !== 'boolean')
    problems.push(`checkSession must be true or false, got ${String(checkSession)}`);
  if (options?.onSessionLeak !== undefined && typeof options.onSessionLeak !== 'function')
    problems.push('onSessionLeak must be a function');
  if (problems.length > 0) throw new ConfigError(problems);
  return { max, ttlMs, lockTimeoutMs, lazyMigrate, tenantRoles, checkSession };
}

function warnLazyFailure(event: LazyMigrationEvent): void {
  const where = event.error?.migration ? ` at ${event.error.migration}` : '';
  console.warn(
    `tenant-migrate: lazy migration of ${event.orgId} (${event.schema}) failed${where}: ${event.error?.message ?? 'unknown error'}; serving it at its current version`,
  );
}
