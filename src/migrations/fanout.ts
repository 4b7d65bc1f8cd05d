import type { Knex } from 'knex';
import { UsageError } from '../errors.ts';
import { isTenantSchemaName, validateOrgId } from '../tenants/naming.ts';
import { assertRegistry, listTenants, setMigrationError, type Tenant } from '../tenants/registry.ts';
import { type Direction, digestOf, planDown, planUp } from './plan.ts';
import { scanSchemas } from './prescan.ts';
import { type RunFailure, type RunSettings, runSchema, type SchemaRunReport } from './runner.ts';
import type { Migration } from './source.ts';
import { TENANT_TRACKING_TABLE, tenantTarget } from './targets.ts';

export type TenantOutcome = 'migrated' | 'up-to-date' | 'failed' | 'skipped';

/** One tenant's line in a fan-out report. */
export interface TenantReport {
  readonly orgId: string;
  readonly schema: string;
  readonly status: string;
  readonly outcome: TenantOutcome;
  /** Migrations applied (or reverted) and committed for this tenant. */
  readonly migrations: readonly string[];
  readonly warnings: readonly string[];
  readonly error: RunFailure | null;
  readonly durationMs: number;
}

export type Totals = Readonly<Record<TenantOutcome, number>> & { readonly total: number };

export interface FanoutReport {
  readonly direction: Direction;
  readonly tenants: readonly TenantReport[];
  readonly totals: Totals;
  readonly durationMs: number;
}

export interface FanoutOptions {
  readonly direction: Direction;
  /** Only these org ids (each must be registered). */
  readonly orgIds?: readonly string[];
  /** Tenants migrating at once; at most the pool size is useful. */
  readonly concurrency: number;
  /** Start no new tenant after the first failure; the rest are reported `skipped`. */
  readonly failFast?: boolean;
  /** With direction `down`: revert every batch, not only the last. */
  readonly all?: boolean;
  /** Read every tenant's tracking table, even where the registry digest says it is up to date. */
  readonly verify?: boolean;
  /** Called when the work is known (tenants that need a run), and after each tenant finishes. */
  readonly onStart?: (total: number, toRun: number) => void;
  readonly onTenant?: (report: TenantReport) => void;
}

/**
 * Runs tenant migrations over every ACTIVE tenant (or the `orgIds` given): a few catalog round
 * trips find the tenants that are behind, then those run with bounded concurrency, each in its
 * own transaction and lock. Never throws for a tenant's failure: it is reported, recorded in
 * the registry for status to show, and the other tenants go on.
 */
export async function runTenants(
  knex: Knex,
  migrations: readonly Migration[],
  settings: RunSettings,
  options: FanoutOptions,
): Promise<FanoutReport> {
  const started = Date.now();
  await assertRegistry(knex);
  const tenants = await selectTenants(knex, options.orgIds, settings.trackDigest ?? false);
  const reports: TenantReport[] = [];
  const emit = (report: TenantReport): void => {
    reports.push(report);
    options.onTenant?.(report);
  };
  const queue: Tenant[] = [];
  const active = tenants.filter((t) => t.status === 'ACTIVE');
  const bySchema = new Map(active.map((t) => [t.schema, t]));
  const preliminary: TenantReport[] = [];
  for (const tenant of tenants) {
    if (tenant.status !== 'ACTIVE') preliminary.push(skipped(tenant, `status is ${tenant.status}, not ACTIVE`));
  }
  // Up-to-date tenants cost nothing: the registry digest, written with each tenant's tracking
  // rows, equals the folder's. Only the others have their tracking tables read.
  const localDigest = digestOf(migrations.map((m) => m.name));
  const digestKept = options.direction === 'up' && settings.trackDigest === true;
  const scannable: Tenant[] = [];
  for (const tenant of active) {
    // A hand-edited row naming `public` (or any non-derived name) is refused by the run, never scanned.
    if (!isTenantSchemaName(tenant.schema)) queue.push(tenant);
    else if (digestKept && !options.verify && tenant.migrationsDigest === localDigest)
      preliminary.push(upToDate(tenant));
    else scannable.push(tenant);
  }
  for await (const states of scanSchemas(
    knex,
    scannable.map((t) => t.schema),
    TENANT_TRACKING_TABLE,
    Math.min(4, options.concurrency),
  )) {
    for (const [schema, state] of states) {
      const tenant = bySchema.get(schema)!;
      // A missing schema is left to the run, which reports it under the tenant's lock like any
      // other failure (so --fail-fast and progress count it).
      if (!state.exists) {
        queue.push(tenant);
        continue;
      }
      const plan =
        options.direction === 'up'
          ? planUp(migrations, state.applied)
          : planDown(migrations, state.applied, options.all ?? false);
      // Up to date but with a stale digest: the run (under the tenant's lock) writes the digest.
      const staleDigest = digestKept && tenant.migrationsDigest !== localDigest;
      if (plan.steps.length === 0 && plan.missing.length === 0 && !staleDigest) preliminary.push(upToDate(tenant));
      else queue.push(tenant);
    }
  }
  options.onStart?.(tenants.length, queue.length);
  for (const report of preliminary) emit(report);
  await recordErrors(knex, preliminary, tenants);

  let next = 0;
  let stop = false;
  const worker = async (): Promise<void> => {
    while (!stop && next < queue.length) {
      const tenant = queue[next++]!;
      const t0 = Date.now();
      const run = isTenantSchemaName(tenant.schema)
        ? await runSchema(knex, tenantTarget(tenant.schema), migrations, settings, options.direction, {
            all: options.all ?? false,
          })
        : refusedSchema(tenant.schema, options.direction);
      const report: TenantReport = {
        orgId: tenant.orgId,
        schema: tenant.schema,
        status: tenant.status,
        outcome: run.outcome,
        migrations: run.migrations,
        warnings: run.warnings,
        error: run.error,
        durationMs: Date.now() - t0,
      };
      await recordErrors(knex, [report], [tenant]);
      emit(report);
      if (report.outcome === 'failed' && options.failFast) stop = true;
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(options.concurrency, queue.length)) }, worker));
  for (const tenant of queue.slice(next))
    emit(skipped(tenant, 'not started: --fail-fast stopped the run after a failure'));
  return {
    direction: options.direction,
    tenants: reports,
    totals: totalsOf(reports),
    durationMs: Date.now() - started,
  };
}

async function selectTenants(
  knex: Knex,
  orgIds: readonly string[] | undefined,
  withDigest: boolean,
): Promise<Tenant[]> {
  if (orgIds === undefined) return listTenants(knex, { withDigest });
  for (const orgId of orgIds) validateOrgId(orgId);
  const tenants = await listTenants(knex, { orgIds, withDigest });
  const found = new Set(tenants.map((t) => t.orgId));
  const unknown = orgIds.filter((id) => !found.has(id));
  if (unknown.length > 0)
    throw new UsageError(`Not registered: ${unknown.join(', ')} (provision them with pnpm provision:tenant)`, {
      code: 'E_UNKNOWN_TENANT',
    });
  return tenants;
}

/** Keeps `last_migration_error` true: set on failure, cleared on the next success. */
async function recordErrors(knex: Knex, reports: readonly TenantReport[], tenants: readonly Tenant[]): Promise<void> {
  const previous = new Map(tenants.map((t) => [t.schema, t.lastMigrationError]));
  for (const report of reports) {
    if (report.outcome === 'skipped') continue;
    const message = report.error?.message ?? null;
    if (message === (previous.get(report.schema) ?? null)) continue;
    try {
      await setMigrationError(knex, report.schema, message);
    } catch {
      // Bookkeeping must not turn a tenant's result into a crash (the server may be gone); the report still says it.
    }
  }
}

/** The report of a tenant whose registry row names a schema the toolkit would not derive. */
function refusedSchema(schema: string, direction: 'up' | 'down'): SchemaRunReport {
  return {
    schema,
    outcome: 'failed',
    direction,
    batch: null,
    migrations: [],
    results: [],
    warnings: [],
    error: {
      migration: null,
      message: `registry schema name ${JSON.stringify(schema)} is not a tenant schema (tid_ + hex); refusing to migrate it`,
      code: 'E_SCHEMA_NAME',
    },
  };
}

function skipped(tenant: Tenant, reason: string): TenantReport {
  return { ...base(tenant), outcome: 'skipped', error: { migration: null, message: reason, code: 'E_SKIPPED' } };
}

function upToDate(tenant: Tenant): TenantReport {
  return { ...base(tenant), outcome: 'up-to-date', error: null };
}

function base(tenant: Tenant): Omit<TenantReport, 'outcome' | 'error'> {
  return {
    orgId: tenant.orgId,
    schema: tenant.schema,
    status: tenant.status,
    migrations: [],
    warnings: [],
    durationMs: 0,
  };
}

export function totalsOf(reports: readonly TenantReport[]): Totals {
  const totals = { migrated: 0, 'up-to-date': 0, failed: 0, skipped: 0, total: reports.length };
  for (const report of reports) totals[report.outcome]++;
  return totals;
}
