import type { Knex } from 'knex';
import type { ConnectionTarget } from '../config/config.ts';
import { lockForTransaction } from '../db/locks.ts';
import { type DumpResult, dumpSchema, type PgDumpTool } from '../db/pg-dump.ts';
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

async function registered(knex: Knex | Knex.Transaction, orgId: string): Promise<Tenant> {
  validateOrgId(orgId);
  const tenant = await findTenantByOrgId(knex, orgId);
  if (!tenant) {
    throw new UsageError(`Not registered: ${orgId} (provision it with pnpm provision:tenant)`, {
      code: 'E_UNKNOWN_TENANT',
    });
  }
  return tenant;
}

/** Re-reads the tenant's row in `trx`, locked against concurrent changes of it. */
async function lockedRow(trx: Knex.Transaction, tenant: Tenant): Promise<Tenant> {
  await lockForTransaction(trx, tenant.schema);
  const row = await trx.withSchema('public').from('tenants').where('id', tenant.id).forUpdate().first('status');
  return { ...tenant, status: String(row?.status ?? 'DELETED') };
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
export async function archiveTenant(knex: Knex, orgId: string): Promise<LifecycleReport> {
  const started = Date.now();
  const tenant = await registered(knex, orgId);
  await assertLifecycleStatuses(knex);
  return knex.transaction(async (trx) => {
    const now = await lockedRow(trx, tenant);
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
export async function restoreTenant(knex: Knex, orgId: string, ctx: RestoreContext): Promise<LifecycleReport> {
  const started = Date.now();
  const tenant = await registered(knex, orgId);
  if (tenant.status === 'ACTIVE') return report('restore', tenant, 'already-active', started);
  if (tenant.status === 'DELETED') throw new TenantDeletedError(orgId, tenant.schema);
  if (tenant.status !== 'ARCHIVED') {
    throw new TenantStatusError(orgId, tenant.schema, tenant.status, 'only an ARCHIVED tenant is restored');
  }
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
  const run = await migrateSchema(
    { knex, migrations: ctx.migrations, settings: ctx.settings, books },
    tenantTarget(tenant.schema),
    {
      intent: UP,
      tenant: { orgId, schema: tenant.schema },
      prepare: async (conn) => {
        // Restored, or dropped, by someone else while we waited for the lock.
        const now = (await findTenantByOrgId(conn, orgId))?.status;
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
  readonly target: ConnectionTarget & { kind: 'server' };
  readonly lockTimeoutMs: number;
}

/**
 * Drops an ARCHIVED tenant, in one transaction under its lock (waiting for a migration or a
 * restore in progress, and checking the status again once it has the lock): first the dump when
 * asked (pg_dump runs while the lock is held, so nothing can restore or migrate the tenant
 * between the dump and the drop, and the file is in place before anything is dropped), then
 * `DROP SCHEMA … CASCADE`, its role if any, and the row marked DELETED, kept for audit. A
 * DELETED tenant is `already-deleted`; any other status is refused (archive it first).
 */
export async function dropTenant(
  knex: Knex,
  orgId: string,
  options: { dump?: DropDump } = {},
): Promise<LifecycleReport> {
  const started = Date.now();
  const tenant = await registered(knex, orgId);
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
  return knex.transaction(async (trx) => {
    const now = await lockedRow(trx, tenant);
    if (now.status === 'DELETED') return report('drop', now, 'already-deleted', started);
    if (now.status !== 'ARCHIVED') throw refuse(now.status);
    const exists = await trx.raw('select exists (select 1 from pg_namespace where nspname = ?) as present', [
      tenant.schema,
    ]);
    const dump =
      options.dump && exists.rows[0]?.present ? await dumpSchema({ ...options.dump, schema: tenant.schema }) : null;
    await trx.raw('drop schema if exists ?? cascade', [tenant.schema]);
    const role = await trx.raw('select 1 from pg_catalog.pg_roles where rolname = ?', [tenantRoleName(tenant.schema)]);
    await dropTenantRole(trx, tenant.schema);
    await trx
      .withSchema('public')
      .from('tenants')
      .where('id', tenant.id)
      .update({ status: 'DELETED', updated_at: trx.fn.now() });
    return report('drop', now, 'dropped', started, { dump, roleDropped: role.rows.length > 0 });
  });
}
