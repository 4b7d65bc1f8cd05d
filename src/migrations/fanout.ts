import type { Knex } from 'knex';
import { UsageError } from '../errors.ts';
import { closeRun, type OpenRun, openRun, pruneLedger, type Retention, type RunIdentity } from '../ledger/ledger.ts';
import { isTenantSchemaName, validateOrgId } from '../tenants/naming.ts';
import { listTenants, type Tenant } from '../tenants/registry.ts';
import { type Capabilities, RunBooks } from './books.ts';
import { type AppliedMigration, type Direction, folderDigest, type Intent, planFor } from './plan.ts';
import { scanSchemas } from './prescan.ts';
import type { Migration } from './source.ts';
import { TENANT_TRACKING_TABLE, tenantTarget } from './targets.ts';
import { migrateSchema, type RunFailure, type RunSettings, type SchemaRunReport } from './unit.ts';

export type TenantOutcome = 'migrated' | 'up-to-date' | 'failed' | 'skipped';

/** One tenant's line in a fan-out report. */
export interface TenantReport {
  readonly orgId: string;
  readonly schema: string;
  readonly status: string;
  readonly outcome: TenantOutcome;
  /** Migrations applied (or reverted) and committed for this tenant. */
  readonly migrations: readonly string[];
  /** The batch applied or reverted, when one was. */
  readonly batch: number | null;
  readonly warnings: readonly string[];
  readonly error: RunFailure | null;
  readonly durationMs: number;
}

export type Totals = Readonly<Record<TenantOutcome, number>> & { readonly total: number };

export interface FanoutReport {
  readonly direction: Direction;
  /** The run's id in the ledger (null where the database has no ledger). */
  readonly runId: number | null;
  readonly tenants: readonly TenantReport[];
  readonly totals: Totals;
  readonly durationMs: number;
}

/**
 * The one settings value of a tenant run: built once from CLI flags or library options and
 * passed down unchanged.
 */
export interface TenantRunOptions {
  /** Only these org ids (each must be registered). */
  readonly orgIds?: readonly string[];
  /** Tenants at once; defaults to the pool size (more is not useful). */
  readonly concurrency?: number;
  /** Start no new tenant after the first failure; the rest are reported `skipped`. */
  readonly failFast?: boolean;
  /** Read every tenant's tracking table, even where the registry digest says it is up to date. */
  readonly verify?: boolean;
  /** Called when the work is known (tenants that need a run), and after each tenant finishes. */
  readonly onStart?: (total: number, toRun: number) => void;
  readonly onTenant?: (report: TenantReport) => void;
}

/** What a fan-out needs beyond the options: decided by the toolkit. */
export interface FanoutPlan {
  readonly command: string;
  readonly kind: 'deploy' | 'rollback';
  readonly direction: Direction;
  /** The intent for a tenant, or why it is left alone (reported `skipped`). */
  readonly intentFor: (tenant: Tenant) => Intent | { readonly skip: string };
  /** The flags as given, for the ledger. */
  readonly flags: Readonly<Record<string, unknown>>;
  readonly rollsBack?: number;
}

/** What the toolkit hands the fan-out: the run's shared parts. */
export interface FanoutContext {
  readonly knex: Knex;
  readonly migrations: readonly Migration[];
  readonly settings: RunSettings;
  readonly capabilities: Capabilities;
  /** Checksums already recorded (verified before the run). */
  readonly recorded: ReadonlySet<string>;
  readonly poolMax: number;
  readonly retention: Retention;
}

interface Queued {
  readonly tenant: Tenant;
  readonly intent: Intent;
  readonly hint: readonly AppliedMigration[] | undefined;
}

/**
 * Runs tenant migrations over every ACTIVE tenant (or the `orgIds` given): a few catalog round
 * trips find the tenants with something to do, then those run through the per-tenant unit with
 * bounded concurrency, each in its own transaction and lock. Never throws for a tenant's
 * failure: it is reported (and recorded by the unit), and the other tenants go on. The run is
 * one row in the ledger; only tenants the run changed or failed get a row of their own.
 */
export async function runTenants(
  ctx: FanoutContext,
  plan: FanoutPlan,
  options: TenantRunOptions = {},
): Promise<FanoutReport> {
  const started = Date.now();
  const tenants = await selectTenants(ctx.knex, options.orgIds, ctx.capabilities.digest);
  const reports: TenantReport[] = [];
  const emit = (report: TenantReport): void => {
    reports.push(report);
    options.onTenant?.(report);
  };
  const ledgerRun = ctx.capabilities.ledger ? await openRun(ctx.knex, identity(ctx, plan)) : undefined;
  const books = new RunBooks({
    knex: ctx.knex,
    capabilities: ctx.capabilities,
    scope: 'tenant',
    migrations: ctx.migrations,
    recorded: ctx.recorded,
    ledger: ledgerRun ? { mode: 'run', run: ledgerRun } : { mode: 'none' },
  });
  try {
    const { queue, preliminary } = await classify(ctx, plan, tenants, options.verify ?? false, books);
    options.onStart?.(tenants.length, queue.length);
    for (const report of preliminary) emit(report);

    const unitRun = { knex: ctx.knex, migrations: ctx.migrations, settings: ctx.settings, books };
    let next = 0;
    let stop = false;
    const worker = async (): Promise<void> => {
      while (!stop && next < queue.length) {
        const { tenant, intent, hint } = queue[next++]!;
        const t0 = Date.now();
        const run = await migrateSchema(unitRun, tenantTarget(tenant.schema), {
          intent,
          tenant: { orgId: tenant.orgId, schema: tenant.schema },
          ...(hint ? { hint } : {}),
        });
        const report = fromRun(tenant, run, Date.now() - t0);
        emit(report);
        if (report.outcome === 'failed' && options.failFast) stop = true;
      }
    };
    const concurrency = Math.max(1, Math.min(options.concurrency ?? ctx.poolMax, ctx.poolMax, queue.length));
    await Promise.all(Array.from({ length: concurrency }, worker));
    for (const { tenant } of queue.slice(next)) {
      emit(skipped(tenant, 'not started: --fail-fast stopped the run after a failure'));
    }
    const totals = totalsOf(reports);
    await books.close();
    if (ledgerRun) await finishRun(ctx, ledgerRun, totals);
    return {
      direction: plan.direction,
      runId: ledgerRun?.id ?? null,
      tenants: reports,
      totals,
      durationMs: Date.now() - started,
    };
  } finally {
    ledgerRun?.stopHeartbeat();
  }
}

async function finishRun(ctx: FanoutContext, run: OpenRun, totals: Totals): Promise<void> {
  await closeRun(ctx.knex, run, totals, totals.failed > 0 ? 'failed' : 'succeeded');
  await pruneLedger(ctx.knex, ctx.retention);
}

function identity(ctx: FanoutContext, plan: FanoutPlan): RunIdentity {
  return {
    command: plan.command,
    kind: plan.kind,
    direction: plan.direction,
    flags: plan.flags,
    folderDigest: folderDigest(ctx.migrations),
    ...(plan.rollsBack !== undefined ? { rollsBack: plan.rollsBack } : {}),
  };
}

/**
 * Sorts the tenants: not ACTIVE or left alone by the plan (skipped), up to date (the registry
 * digest equals the folder's and no error is recorded, or a catalog scan finds nothing to do),
 * and the rest, queued with what the scan saw.
 */
async function classify(
  ctx: FanoutContext,
  plan: FanoutPlan,
  tenants: readonly Tenant[],
  verify: boolean,
  books: RunBooks,
): Promise<{ queue: Queued[]; preliminary: TenantReport[] }> {
  const queue: Queued[] = [];
  const preliminary: TenantReport[] = [];
  const localDigest = folderDigest(ctx.migrations);
  const trustDigest = plan.direction === 'up' && ctx.capabilities.digest && !verify;
  const toScan: { tenant: Tenant; intent: Intent }[] = [];
  for (const tenant of tenants) {
    if (tenant.status !== 'ACTIVE') {
      preliminary.push(skipped(tenant, `status is ${tenant.status}, not ACTIVE`));
      continue;
    }
    const intent = plan.intentFor(tenant);
    if ('skip' in intent) preliminary.push(skipped(tenant, intent.skip));
    // A hand-edited row naming `public` (or any non-derived name) is refused by the run, never scanned.
    else if (!isTenantSchemaName(tenant.schema)) queue.push({ tenant, intent, hint: undefined });
    else if (trustDigest && tenant.migrationsDigest === localDigest && tenant.lastMigrationError === null) {
      books.noteComplete();
      preliminary.push(upToDate(tenant));
    } else toScan.push({ tenant, intent });
  }
  const bySchema = new Map(toScan.map((t) => [t.tenant.schema, t]));
  const schemas = toScan.map((t) => t.tenant.schema);
  const parallel = Math.min(4, ctx.poolMax);
  for await (const states of scanSchemas(ctx.knex, schemas, TENANT_TRACKING_TABLE, parallel)) {
    for (const [schema, state] of states) {
      const { tenant, intent } = bySchema.get(schema)!;
      // A missing schema is left to the unit, which reports it under the tenant's lock like any
      // other failure (so --fail-fast and progress count it).
      if (!state.exists) {
        queue.push({ tenant, intent, hint: [] });
        continue;
      }
      const scanned = planFor(intent, ctx.migrations, state.applied);
      // Up to date but with a stale digest or an old error: the unit (under the lock) puts it right.
      const stale =
        plan.direction === 'up' &&
        ((ctx.capabilities.digest && tenant.migrationsDigest !== localDigest) || tenant.lastMigrationError !== null);
      const idle = scanned.steps.length === 0 && scanned.missing.length === 0 && scanned.blockedBy.length === 0;
      if (idle && !stale) {
        if (plan.direction === 'up') books.noteComplete();
        preliminary.push(upToDate(tenant));
      } else queue.push({ tenant, intent, hint: state.applied });
    }
  }
  return { queue, preliminary };
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
  if (unknown.length > 0) {
    throw new UsageError(`Not registered: ${unknown.join(', ')} (provision them with pnpm provision:tenant)`, {
      code: 'E_UNKNOWN_TENANT',
    });
  }
  return tenants;
}

function fromRun(tenant: Tenant, run: SchemaRunReport, durationMs: number): TenantReport {
  return {
    ...base(tenant),
    outcome: run.outcome,
    migrations: run.migrations,
    batch: run.batch,
    warnings: run.warnings,
    error: run.error,
    durationMs,
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
    batch: null,
    warnings: [],
    durationMs: 0,
  };
}

export function totalsOf(reports: readonly TenantReport[]): Totals {
  const totals = { migrated: 0, 'up-to-date': 0, failed: 0, skipped: 0, total: reports.length };
  for (const report of reports) totals[report.outcome]++;
  return totals;
}
