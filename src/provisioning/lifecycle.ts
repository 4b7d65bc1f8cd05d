import type { Knex } from 'knex';
import { type ConnectionTarget, MAIN_SERVER } from '../config/config.ts';
import { lockForTransaction } from '../db/locks.ts';
import { type DumpResult, dumpSchema, type PgDumpTool } from '../db/pg-dump.ts';
import type { Servers } from '../db/servers.ts';
import { ToolkitError, UsageError } from '../errors.ts';
import { type Capabilities, RunBooks } from '../migrations/books.ts';
import { folderDigest, UP } from '../migrations/plan.ts';
import type { Migration } from '../migrations/source.ts';
import { tenantTarget } from '../migrations/targets.ts';
import { failureOf, migrateSchema, type RunFailure, type RunSettings, SchemaNameError } from '../migrations/unit.ts';
import { TenantDeletedError } from '../runtime/errors.ts';
import { isTenantSchemaName, validateOrgId } from '../tenants/naming.ts';
import { findTenantByOrgId, type Tenant } from '../tenants/registry.ts';
import { dropTenantRole, tenantRoleName } from '../tenants/roles.ts';

/**
 * The end of a tenant's life (docs/lifecycle.md): archive (stop serving, keep everything),
 * restore (serve again, migrated to the current folder first), drop (the schema and its role go,
 * the registry row stays DELETED for audit so that the org id and the schema name are never
 * reused). Each takes the tenant's lock, the one every migration of that schema holds, so it
 * waits for a migration in progress and a migration waits for it.
 *
 * Tenants on several servers (TENANT_SERVERS): the schema, its tracking table, its lock and its
 * role live on the tenant's server; the registry row (and the ledger) on the main one. The lock
 * is taken on the tenant's server first, the registry row after it: the order a migration of a
 * remote tenant follows too (its registry side is written on main once its batch committed).
 */

export type LifecycleOutcome =
  | 'archived'
  | 'already-archived'
  | 'restored'
  | 'already-active'
  | 'dropped'
  | 'already-deleted'
  | 'failed';

/** What one archive, restore or drop did. */
export interface LifecycleReport {
  readonly action: 'archive' | 'restore' | 'drop';
  readonly orgId: string;
  readonly schema: string;
  readonly outcome: LifecycleOutcome;
  /** The registry status found under the tenant's lock, before the change. */
  readonly previousStatus: string;
  /** Restore: the migrations applied and committed on the way back. */
  readonly migrations: readonly string[];
  /** Drop with a dump: where it was written. */
  readonly dump: DumpResult | null;
  /** Drop: whether a per-tenant role (`TENANT_ROLES=on`) existed and was dropped. */
  readonly roleDropped: boolean;
  /** Restore: why it failed (the tenant stays ARCHIVED). */
  readonly error: RunFailure | null;
  readonly durationMs: number;
}

/** The tenant is not in the status the action needs (drop an ARCHIVED tenant; restore an ARCHIVED one). */
export class TenantStatusError extends ToolkitError {
  readonly orgId: string;
  readonly status: string;

  constructor(orgId: string, schema: string, status: string, hint: string) {
    super('E_TENANT_STATUS', `Tenant ${orgId} (${schema}) is ${status}: ${hint}`);
    this.orgId = orgId;
    this.status = status;
  }
}

/** Refuses, before anything is locked, when the registry cannot hold ARCHIVED and DELETED yet. */
export async function assertLifecycleStatuses(knex: Knex): Promise<void> {
  const result = await knex.raw(
    `select pg_get_constraintdef(c.oid) as def from pg_catalog.pg_constraint c
      where c.conrelid = 'public.tenants'::regclass and c.conname = 'tenants_status_check'`,
  );
  const def = (result.rows[0] as { def?: string } | undefined)?.def;
  if (def !== undefined && !def.includes('ARCHIVED')) {
    throw new UsageError('This registry has no ARCHIVED and DELETED statuses yet: run `pnpm migrate:master` first', {
      code: 'E_NO_LIFECYCLE',
    });
  }
}

/**
 * Where tenant schemas live, for a lifecycle action. `recorded`: the registry has the `server`
 * column (master migration 20261203000001), so each tenant's server is read from its row;
 * `pools`: the configured servers (absent: the main server only).
 */
export interface LifecycleServers {
  readonly recorded: boolean;
  readonly pools?: Pick<Servers, 'knexFor' | 'has' | 'names'>;
}

/** The tenant's server is named in its registry row but not configured here. */
export class TenantServerUnknownError extends UsageError {
  readonly server: string;

  constructor(tenant: Pick<Tenant, 'orgId' | 'schema'>, server: string, known: readonly string[]) {
    super(
      `${tenant.orgId} (${tenant.schema}) lives on server ${server}, which is not configured here (known: ${known.join(', ')}; see TENANT_SERVERS)`,
      { code: 'E_UNKNOWN_SERVER' },
    );
    this.server = server;
  }
}

/** Where one tenant's schema is: its server's Knex, and the server's name (null: the main server). */
interface Located {
  readonly knex: Knex;
  readonly server: string | null;
}

async function registered(knex: Knex | Knex.Transaction, orgId: string, servers: LifecycleServers): Promise<Tenant> {
  validateOrgId(orgId);
  const tenant = await findTenantByOrgId(knex, orgId, { withServer: servers.recorded });
  if (!tenant) {
    throw new UsageError(`Not registered: ${orgId} (provision it with pnpm provision:tenant)`, {
      code: 'E_UNKNOWN_TENANT',
    });
  }
  return tenant;
}

/** The server a tenant's schema is on, or TenantServerUnknownError when that server is not configured. */
export function locateTenant(tenant: Tenant, main: Knex, servers: LifecycleServers): Located {
  const server = tenant.server ?? null;
  if (server === null || server === MAIN_SERVER) return { knex: main, server: null };
  const pools = servers.pools;
  if (!pools?.has(server)) throw new TenantServerUnknownError(tenant, server, pools?.names ?? [MAIN_SERVER]);
  return { knex: pools.knexFor(server), server };
}

/**
 * The tenant's registry row re-read in `trx` and locked against concurrent changes of it (its
 * lock taken there first when `lock`: the schema is on the same server as the registry).
 */
async function lockedRow(
  trx: Knex.Transaction,
  tenant: Tenant,
  servers: LifecycleServers,
  lock = true,
): Promise<Tenant> {
  if (lock) await lockForTransaction(trx, tenant.schema);
  const columns = servers.recorded ? ['status', 'server'] : ['status'];
  const row = await trx
    .withSchema('public')
    .from('tenants')
    .where('id', tenant.id)
    .forUpdate()
    .first(...columns);
  // Moved to another server while we waited for its lock (tenant:move): not this action's schema any more.
  if (row && servers.recorded && (row.server ?? null) !== (tenant.server ?? null)) {
    throw new ToolkitError(
      'E_TENANT_MOVED',
      `Tenant ${tenant.orgId} (${tenant.schema}) moved to server ${row.server ?? MAIN_SERVER} meanwhile: try again`,
    );
  }
  return { ...tenant, status: String(row?.status ?? 'DELETED') };
}

/**
 * Runs `cb` with the tenant's registry row locked in a transaction on the main server, under the
 * tenant's lock on the server holding its schema (`remote`: that server's transaction, which
 * commits after the main one's, or first when `remoteFirst`; null for a schema on main).
 */
async function underTenantLock<T>(
  knex: Knex,
  tenant: Tenant,
  where: Located,
  servers: LifecycleServers,
  cb: (trx: Knex.Transaction, now: Tenant, remote: Knex.Transaction | null) => Promise<T>,
  remoteFirst = false,
): Promise<T> {
  if (where.server === null)
    return knex.transaction(async (trx) => cb(trx, await lockedRow(trx, tenant, servers), null));
  const onRemote = (main: Knex.Transaction | null): Promise<T> =>
    where.knex.transaction(async (remote) => {
      // The lock first, on the tenant's server; the registry row after it.
      await lockForTransaction(remote, tenant.schema);
      if (main) return cb(main, await lockedRow(main, tenant, servers, false), remote);
      return knex.transaction(async (trx) => cb(trx, await lockedRow(trx, tenant, servers, false), remote));
    });
  // remoteFirst: the main transaction is opened first (it locks nothing until the tenant's lock
  // is held) so that it commits after the remote one.
  return remoteFirst ? knex.transaction((main) => onRemote(main)) : onRemote(null);
}

function report(
  action: LifecycleReport['action'],
  tenant: Tenant,
  outcome: LifecycleOutcome,
  started: number,
  extra: Partial<LifecycleReport> = {},
): LifecycleReport {
  return {
    action,
    orgId: tenant.orgId,
    schema: tenant.schema,
    outcome,
    previousStatus: tenant.status,
    migrations: [],
    dump: null,
    roleDropped: false,
    error: null,
    durationMs: Date.now() - started,
    ...extra,
  };
}

/**
 * Archives a tenant: status ARCHIVED, schema, data and role kept. Under the tenant's lock, so a
 * migration in progress finishes first; from then on `withTenant` refuses it (TenantArchivedError,
 * the scoping statement re-reads the status) and fan-outs skip it. Any status but DELETED can be
 * archived (an org deleted in Clerk while its provisioning had failed stops being retried).
 * Archiving an archived tenant changes nothing (`already-archived`): webhooks are redelivered.
 */
export async function archiveTenant(
  knex: Knex,
  orgId: string,
  servers: LifecycleServers = { recorded: false },
): Promise<LifecycleReport> {
  const started = Date.now();
  const tenant = await registered(knex, orgId, servers);
  await assertLifecycleStatuses(knex);
  const where = locateTenant(tenant, knex, servers);
  return underTenantLock(knex, tenant, where, servers, async (trx, now) => {
    if (now.status === 'DELETED') throw new TenantDeletedError(orgId, tenant.schema);
    if (now.status === 'ARCHIVED') return report('archive', now, 'already-archived', started);
    await trx
      .withSchema('public')
      .from('tenants')
      .where('id', tenant.id)
      .update({ status: 'ARCHIVED', updated_at: trx.fn.now() });
    return report('archive', now, 'archived', started);
  });
}

/** What a restore needs of the toolkit: the folder, the run's settings, the bookkeeping tables found. */
export interface RestoreContext {
  readonly migrations: readonly Migration[];
  readonly settings: RunSettings;
  readonly capabilities: Capabilities;
  /** Checksums already recorded (verified by the caller). */
  readonly recorded: ReadonlySet<string>;
}

/**
 * Brings an ARCHIVED tenant back: through the per-tenant unit, under its lock, the migrations the
 * folder gained meanwhile are applied and the status set ACTIVE with the last step (in the same
 * transaction when the batch has one). A failing migration leaves it ARCHIVED with the error
 * recorded (`outcome: failed`). Its schema must exist: an org archived before its provisioning
 * finished has nothing to restore (drop it).
 */
export async function restoreTenant(
  knex: Knex,
  orgId: string,
  ctx: RestoreContext,
  servers: LifecycleServers = { recorded: false },
): Promise<LifecycleReport> {
  const started = Date.now();
  const tenant = await registered(knex, orgId, servers);
  if (tenant.status === 'ACTIVE') return report('restore', tenant, 'already-active', started);
  if (tenant.status === 'DELETED') throw new TenantDeletedError(orgId, tenant.schema);
  if (tenant.status !== 'ARCHIVED') {
    throw new TenantStatusError(orgId, tenant.schema, tenant.status, 'only an ARCHIVED tenant is restored');
  }
  const where = locateTenant(tenant, knex, servers);
  const books = new RunBooks({
    knex,
    capabilities: ctx.capabilities,
    scope: 'tenant',
    migrations: ctx.migrations,
    recorded: ctx.recorded,
    ledger: {
      mode: 'per-call',
      identity: {
        command: 'tenant:restore',
        kind: 'provision',
        direction: 'up',
        flags: { orgId },
        folderDigest: folderDigest(ctx.migrations),
      },
    },
  });
  let meanwhile: string | undefined;
  // On the tenant's server; the unit writes its registry side on main (after the batch, for a remote one).
  const run = await migrateSchema(
    { knex: where.knex, migrations: ctx.migrations, settings: ctx.settings, books },
    tenantTarget(tenant.schema, where.server),
    {
      intent: UP,
      tenant: { orgId, schema: tenant.schema },
      prepare: async (conn) => {
        // Restored, or dropped, by someone else while we waited for the lock (the registry is
        // read in the batch's transaction, or on the main server for a remote tenant).
        const now = (await findTenantByOrgId(where.server === null ? conn : knex, orgId))?.status;
        if (now === 'ARCHIVED') return true;
        meanwhile = now ?? 'DELETED';
        return false;
      },
      activate: true,
    },
  );
  if (meanwhile === 'ACTIVE') return report('restore', tenant, 'already-active', started);
  if (meanwhile === 'DELETED') throw new TenantDeletedError(orgId, tenant.schema);
  if (meanwhile !== undefined) {
    throw new TenantStatusError(orgId, tenant.schema, meanwhile, 'only an ARCHIVED tenant is restored');
  }
  if (run.error) {
    return report('restore', tenant, 'failed', started, { migrations: run.migrations, error: run.error });
  }
  try {
    await books.close();
  } catch (error) {
    // After the commit: the tenant is ACTIVE; the report says what failed (the checksums).
    return report('restore', tenant, 'failed', started, { migrations: run.migrations, error: failureOf(error) });
  }
  return report('restore', tenant, 'restored', started, { migrations: run.migrations });
}

/** Where and how to dump a schema before it is dropped (`--dump`). */
export interface DropDump {
  readonly file: string;
  readonly tool: PgDumpTool;
  /** The server holding the schema (its connection target, from the configuration). */
  readonly target: ConnectionTarget & { kind: 'server' };
  readonly lockTimeoutMs: number;
  /** The tenant server `target` is (`main` or a TENANT_SERVERS name); absent: main. */
  readonly server?: string;
}

/**
 * The server a registered tenant's schema is on (`main`, or a TENANT_SERVERS name), for
 * preparing its dump before anything is locked; `main` for an org id that is not registered
 * (the drop then refuses it). TenantServerUnknownError for a server not configured here.
 */
export async function tenantServerOf(knex: Knex, orgId: string, servers: LifecycleServers): Promise<string> {
  validateOrgId(orgId);
  if (!servers.recorded) return MAIN_SERVER;
  const tenant = await findTenantByOrgId(knex, orgId, { withServer: true });
  return tenant ? (locateTenant(tenant, knex, servers).server ?? MAIN_SERVER) : MAIN_SERVER;
}

/**
 * Drops an ARCHIVED tenant, in one transaction under its lock (waiting for a migration or a
 * restore in progress, and checking the status again once it has the lock): first the dump when
 * asked (pg_dump runs while the lock is held, so nothing can restore or migrate the tenant
 * between the dump and the drop, and the file is in place before anything is dropped), then
 * `DROP SCHEMA … CASCADE`, its role if any, and the row marked DELETED, kept for audit. A
 * DELETED tenant is `already-deleted`; any other status is refused (archive it first).
 *
 * A tenant on another server: the dump, the schema and the role on that server, in its
 * transaction, which commits before the registry row is marked DELETED on main (a failure
 * between the two leaves the tenant ARCHIVED with its schema gone: dropping it again finishes).
 */
export async function dropTenant(
  knex: Knex,
  orgId: string,
  options: { dump?: DropDump; servers?: LifecycleServers } = {},
): Promise<LifecycleReport> {
  const started = Date.now();
  const servers = options.servers ?? { recorded: false };
  const tenant = await registered(knex, orgId, servers);
  if (tenant.status === 'DELETED') return report('drop', tenant, 'already-deleted', started);
  const refuse = (status: string): TenantStatusError =>
    new TenantStatusError(
      orgId,
      tenant.schema,
      status,
      'only an ARCHIVED tenant is dropped (pnpm tenant:archive first)',
    );
  if (tenant.status !== 'ARCHIVED') throw refuse(tenant.status);
  // Never a hand-edited name such as `public`: only a schema the toolkit derived is dropped.
  if (!isTenantSchemaName(tenant.schema)) throw new SchemaNameError(tenant.schema);
  const where = locateTenant(tenant, knex, servers);
  const dumpFrom = options.dump?.server ?? MAIN_SERVER;
  if (options.dump && dumpFrom !== (where.server ?? MAIN_SERVER)) {
    throw new UsageError(
      `--dump was prepared for server ${dumpFrom}, but ${orgId} (${tenant.schema}) is on ${where.server ?? MAIN_SERVER}`,
    );
  }
  return underTenantLock(
    knex,
    tenant,
    where,
    servers,
    async (trx, now, remote) => {
      if (now.status === 'DELETED') return report('drop', now, 'already-deleted', started);
      if (now.status !== 'ARCHIVED') throw refuse(now.status);
      // The schema and its role are on the tenant's server; the registry row on main.
      const onServer = remote ?? trx;
      const exists = await onServer.raw('select exists (select 1 from pg_namespace where nspname = ?) as present', [
        tenant.schema,
      ]);
      const dump =
        options.dump && exists.rows[0]?.present ? await dumpSchema({ ...options.dump, schema: tenant.schema }) : null;
      await onServer.raw('drop schema if exists ?? cascade', [tenant.schema]);
      const role = await onServer.raw('select 1 from pg_catalog.pg_roles where rolname = ?', [
        tenantRoleName(tenant.schema),
      ]);
      await dropTenantRole(onServer, tenant.schema);
      await trx
        .withSchema('public')
        .from('tenants')
        .where('id', tenant.id)
        .update({ status: 'DELETED', updated_at: trx.fn.now() });
      return report('drop', now, 'dropped', started, { dump, roleDropped: role.rows.length > 0 });
    },
    true,
  );
}
