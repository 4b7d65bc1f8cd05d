import type { Knex } from 'knex';
import { distributeSchema } from '../citus/citus.ts';
import { MAIN_SERVER } from '../config/config.ts';
import { SQLSTATE, sqlState } from '../db/pg-errors.ts';
import { placeTenant, type Servers, UnknownServerError } from '../db/servers.ts';
import { RegistryMissingError, ToolkitError, UsageError } from '../errors.ts';
import { CapabilityMemo, NO_CAPABILITIES, RunBooks } from '../migrations/books.ts';
import { verifyChecksums } from '../migrations/checksums.ts';
import { folderDigest, UP } from '../migrations/plan.ts';
import type { Migration } from '../migrations/source.ts';
import { tenantTarget } from '../migrations/targets.ts';
import { readApplied, type SchemaTarget } from '../migrations/tracking.ts';
import { failureOf, migrateSchema, type RunFailure, type RunSettings } from '../migrations/unit.ts';
import { TenantArchivedError, TenantDeletedError } from '../runtime/errors.ts';
import { candidateSchemaNames, schemaNameFor, validateOrgId } from '../tenants/naming.ts';
import {
  changeLabels,
  claimTenant,
  findTenantByOrgId,
  findTenantBySchema,
  markTenantFailed,
  registerTenant,
  serversColumnMissing,
  setTenantStatus,
  type Tenant,
  tenantsPerServer,
} from '../tenants/registry.ts';
import { ensureTenantRole } from '../tenants/roles.ts';
import { ensureExtensions } from './extensions.ts';

/**
 * What a long-lived caller (a toolkit serving webhooks) remembers between calls: which
 * bookkeeping tables exist (re-checked while one is missing) and which checksums are verified.
 */
export interface ProvisionMemo {
  readonly capabilities: CapabilityMemo;
  verified?: ReadonlySet<string>;
}

export function provisionMemo(): ProvisionMemo {
  return { capabilities: new CapabilityMemo() };
}

/** What `provision` needs: the tenant migrations, extensions, run settings, and optional labels, dry run and tenant role. */
export interface ProvisionOptions {
  readonly migrations: readonly Migration[];
  /** @internal What a long-lived caller remembers between calls (the toolkit passes its own). */
  readonly memo?: ProvisionMemo;
  /** Extensions to make sure of in `public` before migrating (default config: `vector`). */
  readonly extensions: readonly string[];
  readonly settings: RunSettings;
  /** Labels to add to the tenant (e.g. `canary`); needs the labels master migration. */
  readonly labels?: readonly string[];
  /** Preflight: create the schema and run its migrations in a transaction, then roll back; register nothing. */
  readonly dryRun?: boolean;
  /** `TENANT_ROLES=on`: create the tenant's role with its schema, granted to this application role. */
  readonly tenantRoles?: { readonly appRole: string };
  /** Citus mode: the schema is made a distributed schema right after it is created (docs/citus.md). */
  readonly citus?: boolean;
  /**
   * Tenants on several servers (`TENANT_SERVERS`, docs/servers.md): a new tenant goes to `server`
   * when given, else to the server the placement rule picks; a registered one stays on its own.
   */
  readonly servers?: Servers;
  /** `provision:tenant --server <name>` (needs `servers`). */
  readonly server?: string;
}

/** What `provisionTenant` did for one organisation: its schema, the outcome, the migrations applied. */
export interface ProvisionReport {
  readonly orgId: string;
  readonly schema: string;
  /**
   * `provisioned` now, `already-active` before this call, or `failed` (registry says FAILED);
   * a dry-run's `would-provision` or `would-fail` (nothing was written).
   */
  readonly outcome: 'provisioned' | 'already-active' | 'failed' | 'would-provision' | 'would-fail';
  /** Migrations applied and committed by this call (also when it failed part-way, see the README). */
  readonly migrations: readonly string[];
  readonly durationMs: number;
  readonly error: RunFailure | null;
}

/** The derived schema exists but no registry row claims it: it may hold another organisation's data. */
export class OrphanSchemaError extends ToolkitError {
  constructor(schema: string, orgId: string) {
    super(
      'E_ORPHAN_SCHEMA',
      `Schema ${schema} already exists but is not registered to ${orgId}; refusing to adopt it (it may hold another organisation's data): inspect it, then drop it or register it by hand`,
    );
  }
}

/**
 * Provisions one organisation: registers it PROVISIONING, makes sure the extensions exist, then
 * runs the per-tenant unit with two hooks of its own: under the schema's lock it creates the
 * schema, and with the last step it sets the tenant ACTIVE. When every tenant migration may run
 * in a transaction that is ONE transaction: a crash or a failing migration leaves no schema
 * behind, only the registry row (FAILED with the reason, or PROVISIONING after a crash), and
 * provisioning again resumes. With a `transaction: false` migration the steps commit one by
 * one (as Knex runs them): a failure leaves the schema with the steps that committed, the tenant
 * FAILED naming the migration, and provisioning again continues from there. Concurrent calls for
 * one org queue on the lock and all return the same schema. Throws only for bad input
 * (UsageError), a missing registry, and an org id that is ARCHIVED (TenantArchivedError: restore
 * it) or DELETED (TenantDeletedError, E_TENANT_DELETED: never provisioned again).
 */
export async function provision(knex: Knex, orgId: string, options: ProvisionOptions): Promise<ProvisionReport> {
  const started = Date.now();
  validateOrgId(orgId);
  const memo = options.memo ?? provisionMemo();
  const capabilities = await memo.capabilities.get(knex);
  if (!capabilities.registry) throw new RegistryMissingError();
  const recorded = memo.verified ?? (await verifyChecksums(knex, 'tenant', options.migrations));
  const placed = await placement(knex, options, capabilities.servers);
  if (options.dryRun) return preflight(knex, orgId, options, started, placed);
  // With the column, a registered tenant's server is always read (it may live on another server).
  const tenant = await claim(knex, orgId, placed ?? (capabilities.servers ? null : undefined)).catch(
    (error: unknown) => {
      // The registry was remembered but is gone (master migrations rolled back): say so, look again next time.
      if (sqlState(error) !== SQLSTATE.UNDEFINED_TABLE) throw error;
      memo.capabilities.forget();
      throw new RegistryMissingError();
    },
  );
  refuseRetired(tenant);
  const where = located(tenant, options, knex);
  const result = (
    outcome: ProvisionReport['outcome'],
    migrations: readonly string[],
    error: RunFailure | null = null,
  ): ProvisionReport => ({
    orgId,
    schema: tenant.schema,
    outcome,
    migrations,
    durationMs: Date.now() - started,
    error,
  });
  const books = new RunBooks({
    knex,
    capabilities,
    scope: 'tenant',
    migrations: options.migrations,
    recorded,
    ledger: {
      mode: 'per-call',
      identity: {
        command: 'provision:tenant',
        kind: 'provision',
        direction: 'up',
        flags: { orgId },
        folderDigest: folderDigest(options.migrations),
      },
    },
  });
  // Already ACTIVE (before or while we waited): nothing to apply; record the checksums of what its
  // schema holds (a crash after its commit may have left them unrecorded), and only those: a file
  // still pending for it may yet change.
  const alreadyActive = async (): Promise<ProvisionReport> => {
    const applied = await readApplied(where.knex, where.target).catch(() => []);
    books.noteApplied(applied.map((row) => row.name));
    await books.close();
    memo.verified = new Set([...recorded, ...applied.map((row) => row.name)]);
    return result('already-active', []);
  };
  if (options.labels && options.labels.length > 0) {
    if (!capabilities.labels) throw new UsageError('This registry has no labels yet: run `pnpm migrate:master` first');
    await changeLabels(knex, orgId, options.labels);
  }
  if (tenant.status === 'ACTIVE') return alreadyActive();
  const fail = async (failure: RunFailure, migrations: readonly string[]): Promise<ProvisionReport> => {
    await markTenantFailed(knex, orgId, failure.message).catch(() => undefined);
    return result('failed', migrations, failure);
  };
  try {
    if (tenant.status === 'FAILED') await setTenantStatus(knex, orgId, 'PROVISIONING');
    // Checked every time (one query): an extension can be dropped under a long-lived process.
    await ensureExtensions(where.knex, options.extensions);
  } catch (error) {
    return fail(failureOf(error), []);
  }
  let activeMeanwhile = false;
  let retiredMeanwhile: Tenant | undefined;
  const run = await migrateSchema(
    { knex: where.knex, migrations: options.migrations, settings: options.settings, books },
    where.target,
    {
      intent: UP,
      tenant: { orgId, schema: tenant.schema },
      hint: [],
      prepare: async (conn) => {
        // A concurrent provisioner may have finished while we waited for the lock (the registry
        // is read in this transaction, or on its own server, after the lock).
        const now = await findTenantByOrgId(where.remote ? knex : conn, orgId);
        if (now?.status === 'ACTIVE') {
          activeMeanwhile = true;
          return false;
        }
        // Archived (e.g. organization.deleted) while we waited: never brought back by a provisioning.
        if (now && isRetired(now.status)) {
          retiredMeanwhile = now;
          return false;
        }
        await conn.raw('create schema if not exists ??', [tenant.schema]);
        // Citus mode is the main server's (the coordinator); a tenant on another server is a plain schema.
        if (options.citus && !where.remote) await distributeSchema(conn, tenant.schema);
        // Before the migrations: the role's default privileges then cover every table they create.
        if (options.tenantRoles) await ensureTenantRole(conn, tenant.schema, options.tenantRoles.appRole);
        return true;
      },
      activate: true,
    },
  );
  if (activeMeanwhile) return alreadyActive();
  if (retiredMeanwhile) refuseRetired(retiredMeanwhile);
  if (run.error) {
    // A remembered table that is gone (a rolled-back master migration): look again next time.
    if (isUndefinedObject(run.error.code)) memo.capabilities.forget();
    return fail(run.error, run.migrations);
  }
  try {
    await books.close();
  } catch (error) {
    // After the commit: the tenant is ACTIVE (markTenantFailed leaves it so); the report says what failed.
    return fail(failureOf(error), run.migrations);
  }
  memo.verified = new Set([...recorded, ...run.migrations]);
  return result('provisioned', run.migrations);
}

/**
 * A provisioning dry-run: the schema it would get (the registered one, or the first free derived
 * name), created with every tenant migration and any missing extension in ONE transaction, under
 * the schema's lock and the escape guard, then rolled back. Nothing is registered.
 */
async function preflight(
  knex: Knex,
  orgId: string,
  options: ProvisionOptions,
  started: number,
  placed: string | null | undefined,
): Promise<ProvisionReport> {
  const existing = await findTenantByOrgId(knex, orgId, { withServer: placed !== undefined });
  const schema = existing?.schema ?? (await freeName(knex, orgId));
  const result = (outcome: ProvisionReport['outcome'], migrations: readonly string[], error: RunFailure | null) => ({
    orgId,
    schema,
    outcome,
    migrations,
    durationMs: Date.now() - started,
    error,
  });
  if (existing) refuseRetired(existing);
  if (existing?.status === 'ACTIVE') return result('already-active', [], null);
  const books = new RunBooks({
    knex,
    capabilities: NO_CAPABILITIES,
    scope: 'tenant',
    migrations: options.migrations,
    recorded: new Set(),
    ledger: { mode: 'none' },
  });
  const where = located({ schema, server: existing ? (existing.server ?? null) : (placed ?? null) }, options, knex);
  const run = await migrateSchema(
    { knex: where.knex, migrations: options.migrations, settings: options.settings, books, dryRun: true },
    where.target,
    {
      intent: UP,
      tenant: { orgId, schema },
      hint: [],
      prepare: async (conn) => {
        // In the transaction that is rolled back: CREATE EXTENSION and CREATE SCHEMA are transactional.
        for (const name of options.extensions) {
          await conn.raw('create extension if not exists ?? schema public', [name]);
        }
        await conn.raw('create schema if not exists ??', [schema]);
        if (options.citus && !where.remote) await distributeSchema(conn, schema);
        return true;
      },
    },
  );
  if (run.error) return result('would-fail', run.migrations, run.error);
  return result('would-provision', [...run.migrations, ...run.notChecked], null);
}

/** The name a new registration would get, without registering it. */
async function freeName(knex: Knex, orgId: string): Promise<string> {
  for (const schema of candidateSchemaNames(orgId)) {
    const owner = await findTenantBySchema(knex, schema);
    if (owner && owner.orgId !== orgId) continue;
    const result = await knex.raw('select exists (select 1 from pg_namespace where nspname = ?) as present', [schema]);
    if (!owner && result.rows[0]?.present) throw new OrphanSchemaError(schema, orgId);
    return schema;
  }
  throw new ToolkitError('E_NAME_EXHAUSTED', `Every schema name derived from ${orgId} is registered to another org`);
}

/**
 * Where a new tenant would go: undefined without several servers (the registry may then lack
 * the column), null for the main server, else a server's name: `--server`, or the placement
 * rule (fewest tenants per unit of weight, docs/servers.md).
 */
async function placement(
  knex: Knex,
  options: ProvisionOptions,
  registryKnowsServers: boolean,
): Promise<string | null | undefined> {
  const servers = options.servers;
  if (!servers || servers.names.length <= 1) {
    if (options.server !== undefined && options.server !== MAIN_SERVER)
      throw new UsageError(`--server ${options.server}: no tenant servers are configured (TENANT_SERVERS)`, {
        code: 'E_UNKNOWN_SERVER',
      });
    return undefined;
  }
  if (!registryKnowsServers) throw serversColumnMissing();
  if (options.server !== undefined) {
    if (!servers.has(options.server)) throw new UnknownServerError(options.server, servers.names);
    return options.server === MAIN_SERVER ? null : options.server;
  }
  const counts = new Map([...(await tenantsPerServer(knex))].map(([server, n]) => [server ?? MAIN_SERVER, n] as const));
  const chosen = placeTenant(counts, servers.weights());
  if (chosen === undefined)
    throw new UsageError('Every server has weight 0: no server takes new tenants (MAIN_SERVER_WEIGHT, weight=)');
  return chosen === MAIN_SERVER ? null : chosen;
}

/** The Knex and the target of a registered tenant's schema: on its own server. */
function located(
  tenant: Pick<Tenant, 'schema' | 'server'>,
  options: ProvisionOptions,
  main: Knex,
): { knex: Knex; target: SchemaTarget; remote: boolean } {
  const server = tenant.server ?? null;
  if (options.server !== undefined && (server ?? MAIN_SERVER) !== options.server)
    throw new UsageError(
      `${tenant.schema} is registered on server ${server ?? MAIN_SERVER}, not ${options.server}: a tenant stays on its server`,
      { code: 'E_SERVER_MISMATCH' },
    );
  if (server !== null && !options.servers?.has(server))
    throw new UnknownServerError(server, options.servers?.names ?? [MAIN_SERVER]);
  if (!options.servers || server === null) return { knex: main, target: tenantTarget(tenant.schema), remote: false };
  return { knex: options.servers.knexFor(server), target: tenantTarget(tenant.schema, server), remote: true };
}

function isRetired(status: string): boolean {
  return status === 'ARCHIVED' || status === 'DELETED';
}

/**
 * An ARCHIVED org is brought back by `tenant:restore`, never by a provisioning (a redelivered
 * `organization.created`); a DELETED one is never provisioned again (E_TENANT_DELETED).
 */
function refuseRetired(tenant: Tenant): void {
  if (tenant.status === 'DELETED') throw new TenantDeletedError(tenant.orgId, tenant.schema);
  if (tenant.status === 'ARCHIVED') throw new TenantArchivedError(tenant.orgId, tenant.schema);
}

function isUndefinedObject(code: string | null): boolean {
  return code === SQLSTATE.UNDEFINED_TABLE || code === SQLSTATE.UNDEFINED_COLUMN;
}

/**
 * Finds the org's registry row, or registers it under the first free derived name. A name
 * registered to another org is skipped for a longer one (more hex digits of the same md5); a
 * name that exists as a schema but is registered to nobody is refused, never adopted.
 */
async function claim(knex: Knex, orgId: string, server: string | null | undefined): Promise<Tenant> {
  const fast = await claimTenant(knex, orgId, schemaNameFor(orgId), server);
  if (fast) return fast;
  const existing = await findTenantByOrgId(knex, orgId, { withServer: server !== undefined });
  if (existing) return existing;
  for (const schema of candidateSchemaNames(orgId)) {
    const owner = await findTenantBySchema(knex, schema);
    if (owner && owner.orgId !== orgId) continue;
    const result = await knex.raw('select exists (select 1 from pg_namespace where nspname = ?) as present', [schema]);
    if (!owner && result.rows[0]?.present) {
      // A concurrent call for this org may have registered and created it in the meantime.
      const mine = await findTenantByOrgId(knex, orgId);
      if (mine) return mine;
      throw new OrphanSchemaError(schema, orgId);
    }
    const registered = await registerTenant(knex, orgId, schema, server);
    if (registered) return registered;
  }
  throw new ToolkitError('E_NAME_EXHAUSTED', `Every schema name derived from ${orgId} is registered to another org`);
}
