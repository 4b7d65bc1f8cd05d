import type { Knex } from 'knex';
import { lockForTransaction } from '../db/locks.ts';
import { describeError, ToolkitError } from '../errors.ts';
import { recordChecksums, verifyChecksums } from '../migrations/checksums.ts';
import {
  MigrationFailedError,
  migrateInTransaction,
  type RunFailure,
  type RunSettings,
  runSchema,
} from '../migrations/runner.ts';
import type { Migration } from '../migrations/source.ts';
import { tenantTarget } from '../migrations/targets.ts';
import { candidateSchemaNames, schemaNameFor, validateOrgId } from '../tenants/naming.ts';
import {
  assertRegistry,
  claimTenant,
  findTenantByOrgId,
  findTenantBySchema,
  markTenantFailed,
  registerTenant,
  setTenantStatus,
  type Tenant,
} from '../tenants/registry.ts';
import { ensureExtensions } from './extensions.ts';

/**
 * What a long-lived caller (a toolkit serving webhooks) has already established and need not
 * check again: the registry exists, and these checksums are verified.
 */
export interface ProvisionMemo {
  registry?: boolean;
  verified?: ReadonlySet<string>;
}

export interface ProvisionOptions {
  readonly migrations: readonly Migration[];
  readonly memo?: ProvisionMemo;
  /** Extensions to make sure of in `public` before migrating (default config: `vector`). */
  readonly extensions: readonly string[];
  readonly settings: RunSettings;
}

export interface ProvisionReport {
  readonly orgId: string;
  readonly schema: string;
  /** `provisioned` now, `already-active` before this call, or `failed` (registry says FAILED). */
  readonly outcome: 'provisioned' | 'already-active' | 'failed';
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
 * Provisions one organisation: registers it PROVISIONING, makes sure the extensions exist,
 * then in ONE transaction (locked on the schema, as tenant migrations are) creates the schema,
 * applies every tenant migration and sets ACTIVE. A crash or a failing migration leaves no
 * schema behind, only the registry row (FAILED with the reason, or PROVISIONING after a
 * crash), and provisioning again resumes. Concurrent calls for one org queue on the lock and
 * all return the same schema. Throws only for bad input (UsageError) and a missing registry.
 */
export async function provision(knex: Knex, orgId: string, options: ProvisionOptions): Promise<ProvisionReport> {
  const started = Date.now();
  validateOrgId(orgId);
  const memo = options.memo ?? {};
  if (!memo.registry) {
    await assertRegistry(knex);
    memo.registry = true;
  }
  const recorded = memo.verified ?? (await verifyChecksums(knex, 'tenant', options.migrations));
  const tenant = await claim(knex, orgId);
  const result = (
    outcome: ProvisionReport['outcome'],
    migrations: readonly string[],
    error: unknown = null,
  ): ProvisionReport => ({
    orgId,
    schema: tenant.schema,
    outcome,
    migrations,
    durationMs: Date.now() - started,
    error:
      error === null
        ? null
        : {
            migration: error instanceof MigrationFailedError ? error.migration : null,
            message: describeError(error),
            code: (error as { code?: string }).code ?? null,
          },
  });
  // An ACTIVE tenant has every local file applied: record any checksum a crashed run left unrecorded.
  const alreadyActive = async (): Promise<ProvisionReport> => {
    await recordChecksums(knex, 'tenant', options.migrations, recorded);
    memo.verified = new Set(options.migrations.map((m) => m.name));
    return result('already-active', []);
  };
  if (tenant.status === 'ACTIVE') return alreadyActive();
  try {
    if (tenant.status === 'FAILED') await setTenantStatus(knex, orgId, 'PROVISIONING');
    // Checked every time (one query): an extension can be dropped under a long-lived process.
    await ensureExtensions(knex, options.extensions);
    const target = tenantTarget(tenant.schema);
    const outcome = await knex.transaction(async (trx) => {
      await lockForTransaction(trx, tenant.schema);
      // A concurrent provisioner may have finished while we waited for the lock.
      if ((await findTenantByOrgId(trx, orgId))?.status === 'ACTIVE') return undefined;
      await trx.raw('create schema if not exists ??', [tenant.schema]);
      const run = await migrateInTransaction(trx, target, options.migrations, options.settings, {
        alreadyLocked: true,
      });
      if (run.complete) await setTenantStatus(trx, orgId, 'ACTIVE');
      return run;
    });
    if (outcome === undefined) return alreadyActive();
    let applied = outcome.applied;
    if (!outcome.complete) {
      // Steps declaring `transaction: false` cannot share the transaction; they run now, and the
      // tenant turns ACTIVE only once they have.
      const rest = await runSchema(knex, target, options.migrations, options.settings, 'up');
      applied = [...applied, ...rest.migrations];
      if (rest.error) throw new ToolkitError(rest.error.code ?? 'E_MIGRATION', rest.error.message);
      await setTenantStatus(knex, orgId, 'ACTIVE');
    }
    const newlyApplied = options.migrations.filter((m) => applied.includes(m.name));
    await recordChecksums(knex, 'tenant', newlyApplied, recorded);
    memo.verified = new Set([...recorded, ...newlyApplied.map((m) => m.name)]);
    return result('provisioned', applied);
  } catch (error) {
    await markTenantFailed(knex, orgId, describeError(error)).catch(() => undefined);
    return result('failed', [], error);
  }
}

/**
 * Finds the org's registry row, or registers it under the first free derived name. A name
 * registered to another org is skipped for a longer one (more hex digits of the same md5); a
 * name that exists as a schema but is registered to nobody is refused, never adopted.
 */
async function claim(knex: Knex, orgId: string): Promise<Tenant> {
  const fast = await claimTenant(knex, orgId, schemaNameFor(orgId));
  if (fast) return fast;
  const existing = await findTenantByOrgId(knex, orgId);
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
    const registered = await registerTenant(knex, orgId, schema);
    if (registered) return registered;
  }
  throw new ToolkitError('E_NAME_EXHAUSTED', `Every schema name derived from ${orgId} is registered to another org`);
}
