import type { Knex } from 'knex';
import { withDedicatedConnection } from '../db/dedicated.ts';
import { tenantSearchPath } from '../db/identifiers.ts';
import { lockForTransaction, lockSession, unlockSession } from '../db/locks.ts';
import { RegistryMissingError, ToolkitError, UsageError } from '../errors.ts';
import { closeRun, type OpenRun, openRun, pruneLedger, type Retention, tenantRowClause } from '../ledger/ledger.ts';
import { type Capabilities, probeCapabilities } from '../migrations/books.ts';
import { pacing, selectTenants } from '../migrations/fanout.ts';
import { type Escape, findEscapes, GUARD_MARK_COLUMNS, type GuardMark, guardMarkOf } from '../migrations/guard.ts';
import { tenantTarget } from '../migrations/targets.ts';
import { failureOf, type RunFailure, SchemaMissingError, SchemaNameError } from '../migrations/unit.ts';
import { type Amount, type StopReason, stopMessage } from '../migrations/waves.ts';
import { isTenantSchemaName } from '../tenants/naming.ts';
import type { Tenant } from '../tenants/registry.ts';
import { loadTask, type ResultRow, type RunTask, type RunTenant, type TaskResult } from './task.ts';

/**
 * `tenants:run`: a SQL file or a module run in every selected tenant with a migration's
 * machinery: the tenant's advisory lock (the one the migration unit takes, so a run and a
 * migration of the same tenant queue), its search path for that transaction only, one
 * transaction per tenant, the escape guard, bounded concurrency, the failure budget, a dry-run
 * that rolls each tenant back, and a ledger run (kind `run`) with a row per tenant it ran in or
 * failed on. A tenant's failure is reported, never thrown; the other tenants go on.
 */

export type RunOutcome = 'ran' | 'failed' | 'skipped' | 'would-run' | 'would-fail';

/** One tenant's line of a `tenants:run` report. */
export interface TenantRunReport {
  readonly orgId: string;
  readonly schema: string;
  readonly status: string;
  readonly outcome: RunOutcome;
  /** The rows of the last statement that returned rows (SQL), or what `run` returned; null: none. */
  readonly rows: readonly ResultRow[] | null;
  /** How many rows there were before the cap. */
  readonly rowCount: number;
  /** More than `rowLimit` rows: only the first ones are in `rows`. */
  readonly capped: boolean;
  readonly error: RunFailure | null;
  /** What escaped the schema, when the escape guard refused the tenant's run. */
  readonly escapes: readonly Escape[];
  readonly durationMs: number;
}

export type RunTotals = Readonly<Record<'ran' | 'failed' | 'skipped', number>> & {
  readonly 'would-run'?: number;
  readonly 'would-fail'?: number;
  readonly total: number;
};

export interface FleetRunReport {
  readonly file: string;
  readonly kind: RunTask['kind'];
  /** False with `transaction: false` (`--no-transaction`). */
  readonly transaction: boolean;
  /** Whether the escape guard checked each tenant (off with --allow-outside-schema or --no-transaction). */
  readonly guarded: boolean;
  readonly dryRun: boolean;
  readonly rowLimit: number;
  /** The run's id in the ledger (null on a dry-run, or where the ledger cannot record runs). */
  readonly runId: number | null;
  readonly stoppedBy: StopReason | null;
  readonly warnings: readonly string[];
  readonly tenants: readonly TenantRunReport[];
  readonly totals: RunTotals;
  readonly durationMs: number;
}

/** The one settings value of a `tenants:run`, built once from flags or options. */
export interface FleetRunOptions {
  readonly orgIds?: readonly string[];
  readonly labels?: readonly string[];
  /** Registry statuses to run in (default `ACTIVE`); selected tenants in another status are reported skipped. */
  readonly statuses?: readonly string[];
  readonly concurrency?: number;
  readonly failFast?: boolean;
  readonly maxFailures?: Amount;
  /** Run in each tenant, then roll back: nothing is written (not even the ledger). */
  readonly dryRun?: boolean;
  /**
   * False: no transaction; the tenant's connection is scoped for the session and reset after.
   * Statements commit one by one, and the escape guard cannot check them.
   */
  readonly transaction?: boolean;
  /** Do not refuse a tenant whose run changed something outside its schema. */
  readonly allowOutsideSchema?: boolean;
  /** Result rows kept per tenant (default 100). */
  readonly rowLimit?: number;
  readonly onStart?: (total: number, toRun: number) => void;
  readonly onTenant?: (report: TenantRunReport) => void;
}

/** What the toolkit hands the run. */
export interface FleetRunContext {
  readonly knex: Knex;
  readonly lockTimeoutMs: number;
  /** The configured escape guard (ESCAPE_GUARD); --allow-outside-schema turns it off for one run. */
  readonly escapeGuard: boolean;
  readonly poolMax: number;
  readonly retention: Retention;
}

export const DEFAULT_ROW_LIMIT = 100;

/** Loads `file` and runs it across the selected tenants; see the module comment. */
export async function runAcrossTenants(
  ctx: FleetRunContext,
  file: string,
  options: FleetRunOptions = {},
): Promise<FleetRunReport> {
  const started = Date.now();
  const settings = checked(options, ctx.escapeGuard);
  const task = await loadTask(file);
  const capabilities = await probeCapabilities(ctx.knex);
  if (!capabilities.registry) throw new RegistryMissingError();
  const tenants = await selectTenants({ knex: ctx.knex, capabilities }, options);
  const statuses = new Set(settings.statuses);
  const queue = tenants.filter((t) => statuses.has(t.status));
  const reports: TenantRunReport[] = [];
  const emit = (report: TenantRunReport): void => {
    reports.push(report);
    options.onTenant?.(report);
  };
  const warnings: string[] = [];
  const ledger = settings.dryRun ? false : await ledgerKnowsRuns(ctx.knex, capabilities);
  if (!settings.dryRun && !ledger) {
    warnings.push('the run ledger cannot record tenants:run yet (run pnpm migrate:master): this run is not in it');
  }
  const run = ledger ? await openRun(ctx.knex, identity(task, options)) : undefined;
  try {
    options.onStart?.(tenants.length, queue.length);
    for (const tenant of tenants) {
      if (!statuses.has(tenant.status))
        emit(skipped(tenant, `status is ${tenant.status}, not ${settings.statuses.join(' or ')}`));
    }
    const one = { ctx, task, settings, run };
    const { budget } = pacing(queue.length, 0, options);
    let failures = 0;
    let next = 0;
    let stoppedBy: StopReason | null = null;
    const worker = async (): Promise<void> => {
      while (stoppedBy === null && next < queue.length) {
        const report = await runOne(one, queue[next++]!);
        emit(report);
        if ((report.outcome === 'failed' || report.outcome === 'would-fail') && ++failures >= budget)
          stoppedBy = 'max-failures';
      }
    };
    const concurrency = Math.max(1, Math.min(options.concurrency ?? ctx.poolMax, ctx.poolMax, queue.length));
    await Promise.all(Array.from({ length: concurrency }, worker));
    const reason = stoppedBy === null ? '' : stopMessage(stoppedBy, budget);
    for (const tenant of queue.slice(next)) emit(skipped(tenant, reason));
    const totals = totalsOf(reports, settings.dryRun);
    if (run) {
      const counts = { total: totals.total, migrated: totals.ran, 'up-to-date': 0, failed: totals.failed };
      await closeRun(ctx.knex, run, { ...counts, skipped: totals.skipped }, totals.failed > 0 ? 'failed' : 'succeeded');
      await pruneLedger(ctx.knex, ctx.retention);
    }
    return {
      file: task.file,
      kind: task.kind,
      transaction: settings.transaction,
      guarded: settings.guarded,
      dryRun: settings.dryRun,
      rowLimit: settings.rowLimit,
      runId: run?.id ?? null,
      stoppedBy,
      warnings,
      tenants: reports,
      totals,
      durationMs: Date.now() - started,
    };
  } finally {
    run?.stopHeartbeat();
  }
}

interface Settings {
  readonly statuses: readonly string[];
  readonly dryRun: boolean;
  readonly transaction: boolean;
  readonly guarded: boolean;
  readonly rowLimit: number;
}

function checked(options: FleetRunOptions, escapeGuard: boolean): Settings {
  const transaction = options.transaction ?? true;
  const dryRun = options.dryRun ?? false;
  if (dryRun && !transaction) {
    throw new UsageError('--dry-run needs a transaction to roll back: it does not go with --no-transaction');
  }
  if (options.failFast && options.maxFailures) throw new UsageError('Choose one of --fail-fast and --max-failures');
  const rowLimit = options.rowLimit ?? DEFAULT_ROW_LIMIT;
  if (!Number.isInteger(rowLimit) || rowLimit < 0)
    throw new UsageError(`rowLimit must be a whole number, got ${rowLimit}`);
  const statuses = (options.statuses ?? ['ACTIVE']).map((s) => s.toUpperCase());
  const guarded = escapeGuard && !options.allowOutsideSchema && transaction;
  return { statuses, dryRun, transaction, guarded, rowLimit };
}

/** Whether the ledger exists and its constraints take runs of kind `run` (master migration 20261202000010). */
async function ledgerKnowsRuns(knex: Knex, capabilities: Capabilities): Promise<boolean> {
  if (!capabilities.ledger) return false;
  const result = await knex.raw(
    `select pg_get_constraintdef(oid) like '%''run''%' as knows from pg_constraint
      where conname = 'tenant_migration_runs_kind_check' and conrelid = 'public.tenant_migration_runs'::regclass`,
  );
  // No check constraint at all (dropped by hand): the kind is accepted.
  return result.rows.length === 0 || Boolean(result.rows[0].knows);
}

function identity(task: RunTask, options: FleetRunOptions) {
  const { onStart: _start, onTenant: _tenant, ...flags } = options;
  return {
    command: 'tenants:run',
    kind: 'run',
    direction: 'up',
    flags: { file: task.file, kind: task.kind, ...flags },
    // For a run, the digest of the file that ran (the column holds the migration folder's for migrations).
    folderDigest: task.digest,
  } as const;
}

interface One {
  readonly ctx: FleetRunContext;
  readonly task: RunTask;
  readonly settings: Settings;
  readonly run: OpenRun | undefined;
}

/** A tenant's run refused by the escape guard (rolled back). */
export class RunEscapeError extends ToolkitError {
  readonly escapes: readonly Escape[];
  constructor(file: string, schema: string, escapes: readonly Escape[]) {
    const what = escapes.map((e) => `${e.kind} ${e.name}`).join(', ');
    super(
      'E_SCHEMA_ESCAPE',
      `${file} changed objects outside ${schema}: ${what}; rolled back (--allow-outside-schema if it must)`,
    );
    this.escapes = escapes;
  }
}

/** Ends a dry-run's transaction after the checks, carrying what the tenant's run returned. */
class RollBack {
  constructor(readonly result: TaskResult) {}
}

/** One tenant: run, report, and its ledger row (in its transaction when it has one). */
async function runOne(one: One, tenant: Tenant): Promise<TenantRunReport> {
  const t0 = Date.now();
  const { settings } = one;
  const info: RunTenant = {
    orgId: tenant.orgId,
    schema: tenant.schema,
    status: tenant.status,
    labels: tenant.labels ?? [],
    dryRun: settings.dryRun,
  };
  try {
    // A registry row naming `public` (or any non-derived name, e.g. edited by hand) is never opened.
    if (!isTenantSchemaName(tenant.schema)) throw new SchemaNameError(tenant.schema);
    const result = settings.transaction ? await inTransaction(one, info, t0) : await inSession(one, info, t0);
    return finished(tenant, settings, result, null, Date.now() - t0);
  } catch (error) {
    const report = finished(tenant, settings, null, error, Date.now() - t0);
    if (one.run) {
      await writeLedgerRow(one.ctx.knex, one, report).catch(
        () => undefined /* the report says it; bookkeeping must not turn it into a crash */,
      );
    }
    return report;
  }
}

async function inTransaction(one: One, tenant: RunTenant, t0: number): Promise<TaskResult> {
  const { ctx, task, settings } = one;
  try {
    return await ctx.knex.transaction(async (trx) => {
      // The lock first and alone: lock_timeout must not cut short a wait for a migration of this tenant.
      await lockForTransaction(trx, tenant.schema);
      const mark = await scope(trx, tenant.schema, ctx.lockTimeoutMs, true);
      const result = await task.execute(trx, tenant);
      // Unguarded, the search path is still checked: a session-level SET inside the transaction
      // would outlive its commit on the pooled connection.
      const escapes = settings.guarded
        ? await findEscapes(trx, tenantTarget(tenant.schema), mark)
        : await searchPathEscape(trx, tenant.schema);
      if (escapes.length > 0) throw new RunEscapeError(task.name, tenant.schema, escapes);
      if (settings.dryRun) throw new RollBack(result);
      if (one.run) await writeLedgerRow(trx, one, ran(tenant, Date.now() - t0));
      return result;
    });
  } catch (error) {
    if (error instanceof RollBack) return error.result;
    throw error;
  }
}

/**
 * `--no-transaction`: one dedicated connection under the session lock, its search path and lock
 * timeout set for the session, each statement committing on its own. Afterwards the session is
 * put back as the pool handed it out: any transaction block the code left open is rolled back,
 * every setting it changed (`RESET ALL`, which also undoes ours) and its role are reset, and the
 * lock released. A search path changed by the code fails the tenant (it ran somewhere else).
 */
async function inSession(one: One, tenant: RunTenant, t0: number): Promise<TaskResult> {
  const { ctx, task } = one;
  return withDedicatedConnection(ctx.knex, async (conn) => {
    await lockSession(conn, tenant.schema);
    try {
      await scope(conn, tenant.schema, ctx.lockTimeoutMs, false);
      const result = await task.execute(conn, tenant);
      const escapes = await searchPathEscape(conn, tenant.schema);
      if (escapes.length > 0) throw new RunEscapeError(task.name, tenant.schema, escapes);
      if (one.run) await writeLedgerRow(conn, one, ran(tenant, Date.now() - t0));
      return result;
    } finally {
      // A failed task's connection is also discarded by withDedicatedConnection; a clean one goes back reset.
      await conn.raw('rollback').catch(() => undefined);
      await conn.raw('reset all; reset role; reset session authorization').catch(() => undefined);
      await unlockSession(conn, tenant.schema).catch(() => undefined);
    }
  });
}

/**
 * The tenant's search path and lock timeout (for the transaction only when `local`), whether its
 * schema exists (PostgreSQL would silently skip a missing one and fall through to public), and
 * the escape guard's mark, in one statement.
 */
async function scope(conn: Knex, schema: string, lockTimeoutMs: number, local: boolean): Promise<GuardMark> {
  const result = await conn.raw(
    `select set_config('search_path', ?, ?) as search_path, set_config('lock_timeout', ?, ?) as lock_timeout,
            exists (select 1 from pg_namespace where nspname = ?) as schema_exists, ${GUARD_MARK_COLUMNS}`,
    [tenantSearchPath(schema), local, `${lockTimeoutMs}ms`, local, schema],
  );
  const row = result.rows[0] as { schema_exists: boolean; guard_locked: string[]; guard_type_oid: string };
  if (!row.schema_exists) throw new SchemaMissingError(schema);
  return guardMarkOf(row);
}

/** The search path, if the code changed it (`SET search_path`): then it ran somewhere else. */
async function searchPathEscape(conn: Knex, schema: string): Promise<Escape[]> {
  const result = await conn.raw("select current_setting('search_path') as search_path");
  const now = String(result.rows[0]?.search_path);
  return now === tenantSearchPath(schema) ? [] : [{ kind: 'search_path', name: now }];
}

type LedgerLine = Pick<TenantRunReport, 'orgId' | 'schema' | 'outcome' | 'error' | 'durationMs'>;

async function writeLedgerRow(conn: Knex, one: One, report: LedgerLine): Promise<void> {
  const clause = tenantRowClause(one.run!, {
    schema: report.schema,
    orgId: report.orgId,
    outcome: report.outcome === 'ran' ? 'ran' : 'failed',
    direction: 'up',
    migrations: [one.task.name],
    batch: null,
    error: report.error,
    durationMs: report.durationMs,
  });
  await conn.raw(`with ${clause.sql} select 1`, [...clause.bindings]);
}

function ran(tenant: RunTenant, durationMs: number): LedgerLine {
  return { orgId: tenant.orgId, schema: tenant.schema, outcome: 'ran', error: null, durationMs };
}

function finished(
  tenant: Tenant,
  settings: Settings,
  result: TaskResult | null,
  error: unknown,
  durationMs: number,
): TenantRunReport {
  const all = result?.rows ?? null;
  const failed = error !== null;
  return {
    orgId: tenant.orgId,
    schema: tenant.schema,
    status: tenant.status,
    outcome: settings.dryRun ? (failed ? 'would-fail' : 'would-run') : failed ? 'failed' : 'ran',
    rows: all === null ? null : all.slice(0, settings.rowLimit),
    rowCount: all?.length ?? 0,
    capped: (all?.length ?? 0) > settings.rowLimit,
    error: failed ? failureOf(error) : null,
    escapes: error instanceof RunEscapeError ? error.escapes : [],
    durationMs,
  };
}

function skipped(tenant: Tenant, reason: string): TenantRunReport {
  return {
    orgId: tenant.orgId,
    schema: tenant.schema,
    status: tenant.status,
    outcome: 'skipped',
    rows: null,
    rowCount: 0,
    capped: false,
    error: { migration: null, message: reason, code: 'E_SKIPPED' },
    escapes: [],
    durationMs: 0,
  };
}

export function totalsOf(reports: readonly TenantRunReport[], dryRun: boolean): RunTotals {
  const totals = { ran: 0, failed: 0, skipped: 0, 'would-run': 0, 'would-fail': 0, total: reports.length };
  for (const report of reports) totals[report.outcome]++;
  if (dryRun) return totals;
  const { 'would-run': _run, 'would-fail': _fail, ...real } = totals;
  return real;
}
