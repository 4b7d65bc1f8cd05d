import type { Knex } from 'knex';
import { messageOf, RegistryMissingError, UsageError } from '../errors.ts';
import { closeRun, openRun, pruneLedger, type Retention } from '../ledger/ledger.ts';
import { type Capabilities, probeCapabilities } from '../migrations/books.ts';
import {
  groupBy,
  knexOf,
  MAIN,
  pacing,
  probe,
  selectTenants,
  serverOf,
  type TenantServerPools,
} from '../migrations/fanout.ts';
import { type Amount, type StopReason, stopMessage } from '../migrations/waves.ts';
import { serversColumnMissing, type Tenant } from '../tenants/registry.ts';
import { loadTask, type RunTask } from './task.ts';
import {
  type FleetRunSettings,
  runInTenant,
  serverDown,
  skipped,
  type TenantRunReport,
  type TenantRunShared,
} from './tenant-run.ts';

export type { FleetRunSettings, RunOutcome, TenantRunReport } from './tenant-run.ts';

/**
 * `tenants:run`: a SQL file or a module run in every selected tenant with a migration's
 * machinery: the tenant's advisory lock (the one the migration unit takes, so a run and a
 * migration of the same tenant queue), its search path for that transaction only, one
 * transaction per tenant, the escape guard, bounded concurrency, the failure budget, a dry-run
 * that rolls each tenant back, and a ledger run (kind `run`) with a row per tenant it ran in or
 * failed on. A tenant's failure is reported, never thrown; the other tenants go on.
 *
 * Tenants on several servers (TENANT_SERVERS): each runs on its server's pool, with the run's
 * concurrency per server (as `migrate:tenants`); a server that does not answer fails its
 * tenants with one line, and the others go on.
 */

export type RunTotals = Readonly<Record<'ran' | 'failed' | 'skipped', number>> & {
  readonly 'would-run'?: number;
  readonly 'would-fail'?: number;
  readonly total: number;
};

/** What `tenants:run` did: one report per tenant (with its result rows), totals, the ledger run id. */
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
  /** Only tenants on these servers (`main` is the registry's own; TENANT_SERVERS names the others). */
  readonly servers?: readonly string[];
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
  /** Tenants on several servers; absent when none are configured. */
  readonly servers?: TenantServerPools;
}

/** Result rows kept per tenant in a `tenants:run` report unless `rowLimit` says otherwise. */
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
  if (ctx.servers && !capabilities.servers) throw serversColumnMissing();
  const tenants = await selectTenants({ knex: ctx.knex, capabilities }, options);
  const statuses = new Set(settings.statuses);
  const queue = tenants.filter((t) => statuses.has(t.status));
  const reports: TenantRunReport[] = [];
  const emit = (tenant: Tenant, report: TenantRunReport): void => {
    const line = ctx.servers ? { ...report, server: serverOf(tenant) } : report;
    reports.push(line);
    options.onTenant?.(line);
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
        emit(tenant, skipped(tenant, `status is ${tenant.status}, not ${settings.statuses.join(' or ')}`));
    }
    const shared: TenantRunShared = {
      knex: ctx.knex,
      lockTimeoutMs: ctx.lockTimeoutMs,
      task,
      settings,
      run,
      warn: (message) => warnings.push(message),
    };
    const { budget } = pacing(queue.length, 0, options);
    let failures = 0;
    let stoppedBy: StopReason | null = null;
    const begun = new Set<Tenant>();
    const down = new Map<string, string>();
    const runOne = async (tenant: Tenant): Promise<TenantRunReport> => {
      const server = serverOf(tenant);
      const known = down.get(server);
      if (known !== undefined) return serverDown(tenant, settings, known);
      let knex: Knex;
      try {
        knex = knexOf(ctx, server);
      } catch (error) {
        down.set(server, messageOf(error));
        return serverDown(tenant, settings, messageOf(error));
      }
      const report = await runInTenant(shared, tenant, { knex, remote: server !== MAIN });
      if (report.error === null || server === MAIN) return report;
      // A tenant server that stopped answering fails its remaining tenants at once, with one line.
      const why = down.get(server) ?? (await probe(ctx.servers, server));
      if (why === undefined) return report;
      down.set(server, why);
      return { ...report, error: { migration: null, message: why, code: 'E_SERVER_DOWN' } };
    };
    // Each server's tenants on its own pool, as many at once as that pool allows.
    await Promise.all(
      [...groupBy(queue, serverOf)].map(([server, items]) => {
        let next = 0;
        const worker = async (): Promise<void> => {
          while (stoppedBy === null && next < items.length) {
            const tenant = items[next++]!;
            begun.add(tenant);
            const report = await runOne(tenant);
            emit(tenant, report);
            if ((report.outcome === 'failed' || report.outcome === 'would-fail') && ++failures >= budget)
              stoppedBy = 'max-failures';
          }
        };
        const pool = poolMaxOf(ctx, server);
        const concurrency = Math.max(1, Math.min(options.concurrency ?? pool, pool, items.length));
        return Promise.all(Array.from({ length: concurrency }, worker));
      }),
    );
    const reason = stoppedBy === null ? '' : stopMessage(stoppedBy, budget);
    for (const tenant of queue) if (!begun.has(tenant)) emit(tenant, skipped(tenant, reason));
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

/** A server's pool size (its concurrency cap); 1 for a server that is not configured (its tenants fail at once). */
function poolMaxOf(ctx: FleetRunContext, server: string): number {
  if (server === MAIN || !ctx.servers) return ctx.poolMax;
  try {
    return ctx.servers.poolMax(server);
  } catch {
    return 1;
  }
}

function checked(options: FleetRunOptions, escapeGuard: boolean): FleetRunSettings {
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

export function totalsOf(reports: readonly TenantRunReport[], dryRun: boolean): RunTotals {
  const totals = { ran: 0, failed: 0, skipped: 0, 'would-run': 0, 'would-fail': 0, total: reports.length };
  for (const report of reports) totals[report.outcome]++;
  if (dryRun) return totals;
  const { 'would-run': _run, 'would-fail': _fail, ...real } = totals;
  return real;
}
