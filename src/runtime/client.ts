import type { Knex } from 'knex';
import { DEFAULTS, parseDuration } from '../config/config.ts';
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
  /** The scoping statement's bindings, built once per lookup (Knex reads them, never writes them). */
  readonly bindings: readonly string[];
}

const DEFAULT_CACHE_MAX = 1000;
const DEFAULT_CACHE_TTL_MS = 60_000;

/**
 * One statement scopes the transaction and proves the scope is safe: it re-reads the registry
 * row of this org (it selects from it: no row, nothing is set and the caller looks again), whose
 * status counts only if the row still names this schema, so that a cached entry never sends an
 * org to a schema that is no longer registered to it (the status is then null); it sets the
 * search_path for this transaction only (a bound value, so it cannot outlive COMMIT/ROLLBACK);
 * and it checks the schema exists (PostgreSQL silently skips a missing schema on the path and
 * would resolve the callback's tables in public).
 *
 * It is parsed and planned on every call (an unnamed statement, as Knex sends it), so its shape
 * is chosen for server time, measured per call: `to_regnamespace()` is a catalog cache lookup
 * where `exists (select … from pg_namespace …)` was a subquery to plan (about 40 µs less), and
 * the registry row is the statement's own FROM, filtered on the org id's unique index alone,
 * where a scalar subquery on org id and schema cost about 15 µs more.
 */
const SCOPE_COLUMNS = `set_config('search_path', ?, true) as search_path,
       to_regnamespace(?) is not null as schema_exists,
       case when schema_name = ? then status end as status`;
const SCOPE_FROM = 'from public.tenants where clerk_org_id = ?';

/**
 * The scoping statement for a client's options; its bindings are `scopeBindings`'. With tenant
 * roles it also switches to the tenant's role for this transaction (`set_config('role', …,
 * true)` is `SET LOCAL ROLE`). Privileges are checked when a statement starts, before any of
 * its columns is computed, so this statement may still read the registry, which the tenant's
 * role cannot. With the session check, its first column reads the session's settings before
 * the columns after it change them (see isolation.ts).
 */
function scopeSql(tenantRoles: boolean, checkSession: boolean): string {
  const before = checkSession ? `${SESSION_BEFORE_COLUMN},\n       ` : '';
  const role = tenantRoles ? `,\n       set_config('role', ?, true) as role` : '';
  return `select ${before}${SCOPE_COLUMNS}${role}\n  ${SCOPE_FROM}`;
}

/**
 * For a tenant on another server than the registry's: the same scoping without the registry
 * row (it is not there), which a statement on the main server reads at the same time
 * (`REMOTE_STATUS_SQL`), so the tenant's status is still checked on every call.
 */
function remoteScopeSql(tenantRoles: boolean, checkSession: boolean): string {
  const before = checkSession ? `${SESSION_BEFORE_COLUMN},\n       ` : '';
  const role = tenantRoles ? `,\n       set_config('role', ?, true) as role` : '';
  return `select ${before}set_config('search_path', ?, true) as search_path,
       to_regnamespace(?) is not null as schema_exists${role}`;
}

/** The registry row's status, counted only while it names this schema on this server. */
const REMOTE_STATUS_SQL = `select case when schema_name = ? and server = ? then status end as status
  from public.tenants where clerk_org_id = ?`;

function remoteScopeBindings(schema: string, tenantRoles: boolean): readonly string[] {
  const bindings = [tenantSearchPath(schema), quoteIdent(schema)];
  if (tenantRoles) bindings.push(tenantRoleName(schema));
  return Object.freeze(bindings);
}

/** The scoping statement's bindings for a tenant, in the order of `scopeSql`'s placeholders. */
function scopeBindings(orgId: string, schema: string, tenantRoles: boolean): readonly string[] {
  const bindings = [tenantSearchPath(schema), quoteIdent(schema), schema];
  if (tenantRoles) bindings.push(tenantRoleName(schema));
  bindings.push(orgId);
  return Object.freeze(bindings);
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
 * Creates the tenant-aware client. Per `withTenant`: on a cache hit, four round trips (BEGIN,
 * the scoping statement, COMMIT, plus the callback's own); a miss adds one registry lookup.
 * Throws ConfigError listing every invalid option.
 */
export function createTenantClient(options: TenantClientOptions): TenantClient {
  const settings = validate(options);
  const { knex } = options;
  const now = options.clock ?? Date.now;
  const cache = new ExpiringLru<string, CachedTenant>(settings.max, now);
  const lookups = new Map<string, Promise<CachedTenant>>();
  const counters = { hits: 0, lookups: 0, leaks: 0 };
  const scopeStatement = scopeSql(settings.tenantRoles, settings.checkSession);
  const remoteScopeStatement = remoteScopeSql(settings.tenantRoles, settings.checkSession);
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
      bindings:
        server === null
          ? scopeBindings(orgId, row.schema, settings.tenantRoles)
          : remoteScopeBindings(row.schema, settings.tenantRoles),
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

  /** Scopes the transaction; returns the session's watched settings before it (with the session check). */
  const scope = async (
    trx: Knex.Transaction,
    tenant: CachedTenant,
    registry: Promise<string | null> | undefined,
  ): Promise<string | undefined> => {
    let row: { schema_exists: boolean; status: string | null; session_before?: string } | undefined;
    try {
      if (registry === undefined) row = (await trx.raw(scopeStatement, tenant.bindings as string[])).rows[0];
      else {
        const [scoped, status] = await Promise.all([
          trx.raw(remoteScopeStatement, tenant.bindings as string[]),
          registry,
        ]);
        row = status === null ? undefined : { ...scoped.rows[0], status };
      }
    } catch (error) {
      const role = settings.tenantRoles ? tenantRoleName(tenant.schema) : undefined;
      if (!role || !isRoleSwitchFailure(error, role)) throw registryError(error);
      // No role: not made yet (`tenants:roles`), or dropped with its tenant since it was cached.
      // The registry says which: look again, and report a missing role only for a tenant it serves.
      cache.delete(tenant.orgId);
      throw new StaleEntry(new TenantRoleError(tenant.orgId, tenant.schema, role, error));
    }
    // No row: the org is no longer registered; a null status: its row names another schema now.
    if (row?.status == null) {
      cache.delete(tenant.orgId);
      throw new StaleEntry();
    }
    if (row.status !== 'ACTIVE') {
      cache.delete(tenant.orgId);
      // ARCHIVED or DELETED since it was cached: TenantArchivedError at once, whatever the cache's TTL.
      throw notServedError(tenant.orgId, tenant.schema, row.status);
    }
    if (!row.schema_exists) {
      cache.delete(tenant.orgId);
      throw new TenantUnavailableError(tenant.orgId, tenant.schema, row.status, 'schema-missing');
    }
    return row.session_before;
  };

  /** On the main server, for a tenant elsewhere: its registry status, read while its transaction begins. */
  const remoteStatus = async (tenant: CachedTenant): Promise<string | null> => {
    const result = await knex.raw(REMOTE_STATUS_SQL, [tenant.schema, tenant.server!, tenant.orgId]);
    return (result.rows[0] as { status: string | null } | undefined)?.status ?? null;
  };

  /** One transaction scoped to the tenant; session settings `cb` changed are set back before the connection is reused. */
  const run = <T>(tenant: CachedTenant, cb: (trx: Knex.Transaction, tenant: TenantScope) => Promise<T>): Promise<T> => {
    const registry = tenant.server === null ? undefined : remoteStatus(tenant);
    registry?.catch(() => undefined); // awaited in `scope`; this only keeps an early failure from going unhandled
    return tenant.pool.transaction(async (trx) => {
      const before = await scope(trx, tenant, registry);
      if (before !== undefined)
        checkSessionAtCommit(trx, before, (changed) => {
          counters.leaks++;
          onSessionLeak({ ...tenant.scope, changed });
        });
      return cb(trx, tenant.scope);
    });
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
