import type { Knex } from 'knex';
import { messageOf, ToolkitError, UsageError } from '../errors.ts';
import { closeRun, type OpenRun, openRun, pruneLedger, type Retention, type RunIdentity } from '../ledger/ledger.ts';
import { isTenantSchemaName, validateOrgId } from '../tenants/naming.ts';
import { listTenants, type Tenant } from '../tenants/registry.ts';
import { type Capabilities, RunBooks } from './books.ts';
import type { Escape } from './guard.ts';
import { type AppliedMigration, type Direction, folderDigest, type Intent, planFor } from './plan.ts';
import { scanSchemas } from './prescan.ts';
import type { Migration } from './source.ts';
import { TENANT_TRACKING_TABLE, tenantTarget } from './targets.ts';
import { migrateSchema, type RunFailure, type RunSettings, type SchemaRunReport } from './unit.ts';
import { type Amount, resolveAmount, type StopReason, stopMessage, waveEnds } from './waves.ts';

/** `would-migrate` and `would-fail` are a dry-run's outcomes. */
export type TenantOutcome = 'migrated' | 'up-to-date' | 'failed' | 'skipped' | 'would-migrate' | 'would-fail';

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
  /** Dry-run: `transaction: false` migrations (and any after them), not executed. */
  readonly notChecked: readonly string[];
  /** What escaped the schema, when the escape guard refused the batch. */
  readonly escapes: readonly Escape[];
  /** Migrations of this batch that opted out of the escape guard (`allowOutsideSchema`). */
  readonly unguarded: readonly string[];
  /** The server the tenant lives on (`main` or a TENANT_SERVERS name), when servers are configured. */
  readonly server?: string;
}

/** Counts per outcome; a dry-run's also count `would-migrate` and `would-fail`. */
export type Totals = Readonly<Record<'migrated' | 'up-to-date' | 'failed' | 'skipped', number>> & {
  readonly 'would-migrate'?: number;
  readonly 'would-fail'?: number;
  readonly total: number;
};

/** What a fan-out (`migrate:tenants`, `rollback:tenants`) did: one report per tenant, totals, canaries, waves, the ledger run id. */
export interface FanoutReport {
  readonly direction: Direction;
  /** A dry-run: every batch was rolled back and nothing was recorded. */
  readonly dryRun: boolean;
  /** The canary tenants (org ids) that ran first, in order. */
  readonly canaries: readonly string[];
  /** The waves as they ran: org ids per wave (one wave when the run was not paced). */
  readonly waves: readonly (readonly string[])[];
  /** Why tenants were left `skipped` before they started, if the run stopped early. */
  readonly stoppedBy: StopReason | null;
  /** `--sql`: the statements the first tenant's pending migrations sent, in its dry-run. */
  readonly sql: { readonly orgId: string; readonly schema: string; readonly statements: readonly string[] } | null;
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
  /** Start no new tenant after the first failure; the rest are reported `skipped` (`maxFailures: 1`). */
  readonly failFast?: boolean;
  /** Start no new tenant once this many have failed; the rest are reported `skipped`. */
  readonly maxFailures?: Amount;
  /** Run these tenants first, alone: if any fails, stop (the rest `skipped`). */
  readonly canary?: Amount;
  /** Org ids to use as the canary wave (instead of the first `canary` tenants). */
  readonly canaryTenants?: readonly string[];
  /** Label whose tenants form the canary wave. */
  readonly canaryLabel?: string;
  /** Successive waves, cumulative cut points (`1, 10%, 50%, 100%`); a failing wave stops the run. */
  readonly waves?: readonly Amount[];
  /** Only tenants carrying one of these labels. */
  readonly labels?: readonly string[];
  /** Only tenants on these servers (`main` is the registry's own; TENANT_SERVERS names the others). */
  readonly servers?: readonly string[];
  /** Preflight: run every batch, then roll it back; write nothing. */
  readonly dryRun?: boolean;
  /** With `dryRun`: capture the SQL of the first tenant with work (`--sql`). */
  readonly sql?: boolean;
  /** Read every tenant's tracking table, even where the registry digest says it is up to date. */
  readonly verify?: boolean;
  /** Called when the work is known (tenants that need a run), and after each tenant finishes. */
  readonly onStart?: (total: number, toRun: number) => void;
  /** Called as each wave starts (1-based), with its size. */
  readonly onWave?: (wave: number, waves: number, size: number) => void;
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

/**
 * The servers tenants live on (`TENANT_SERVERS`, src/db/servers.ts): each tenant's batch runs on
 * its server's pool, with the run's concurrency per server. Absent: every tenant is on `knex`.
 */
export interface TenantServerPools {
  knexFor(name: string | null): Knex;
  /** The pool size of a server (its concurrency cap). */
  poolMax(name: string): number;
  /** `host:port/database` for messages. */
  describe(name: string): string;
}

/** The name of the registry's own server (a registry row whose `server` is null). */
export const MAIN = 'main';

/** What the toolkit hands the fan-out: the run's shared parts. */
export interface FanoutContext {
  readonly knex: Knex;
  /** Tenants on several servers; absent when none are configured. */
  readonly servers?: TenantServerPools;
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
  const dryRun = options.dryRun ?? false;
  const tenants = await selectTenants(ctx, options);
  const reports: TenantReport[] = [];
  const servers = new Map(tenants.map((t) => [t.schema, serverOf(t)]));
  const emit = (line: TenantReport): void => {
    const report = ctx.servers ? { ...line, server: servers.get(line.schema) ?? MAIN } : line;
    reports.push(report);
    options.onTenant?.(report);
  };
  // A dry-run writes nothing: no ledger run, no checksums (its books record nothing).
  const ledgerRun = ctx.capabilities.ledger && !dryRun ? await openRun(ctx.knex, identity(ctx, plan)) : undefined;
  const books = new RunBooks({
    knex: ctx.knex,
    capabilities: ctx.capabilities,
    scope: 'tenant',
    migrations: ctx.migrations,
    recorded: ctx.recorded,
    ledger: ledgerRun ? { mode: 'run', run: ledgerRun } : { mode: 'none' },
  });
  try {
    const classified = await classify(ctx, plan, tenants, options.verify ?? false, books);
    const { queue, canaries } = canariesFirst(classified.queue, options);
    options.onStart?.(tenants.length, queue.length);
    for (const report of classified.preliminary) emit(report);

    const down = new Map<string, string>();
    const runOne = async ({ tenant, intent, hint }: Queued, sqlLog?: string[]): Promise<TenantReport> => {
      const server = serverOf(tenant);
      const unreachable = down.get(server);
      if (unreachable !== undefined) {
        const report = failed(tenant, unreachable);
        emit(report);
        return report;
      }
      let knex: Knex;
      try {
        knex = knexOf(ctx, server);
      } catch (error) {
        down.set(server, messageOf(error));
        const report = failed(tenant, messageOf(error));
        emit(report);
        return report;
      }
      const t0 = Date.now();
      const unitRun = { knex, migrations: ctx.migrations, settings: ctx.settings, books, dryRun };
      const run = await migrateSchema(unitRun, tenantTarget(tenant.schema, tenant.server), {
        intent,
        tenant: { orgId: tenant.orgId, schema: tenant.schema },
        // With servers, a tenant may be moved while the run is queued: looked at again under its lock.
        ...(ctx.servers && ctx.capabilities.servers
          ? { prepare: (conn: Knex | Knex.Transaction) => stillHere(ctx, tenant, conn) }
          : {}),
        ...(hint ? { hint } : {}),
        ...(sqlLog ? { sqlLog } : {}),
      });
      let report = fromRun(tenant, run, Date.now() - t0);
      // A tenant server that stopped answering fails its remaining tenants at once, with one line.
      if (run.error && server !== MAIN) {
        const why = down.get(server) ?? (await probe(ctx.servers, server));
        if (why !== undefined) {
          down.set(server, why);
          report = { ...report, error: { migration: null, message: why, code: 'E_SERVER_DOWN' } };
        }
      }
      emit(report);
      return report;
    };

    const pace = pacing(queue.length, canaries.length, options);
    let failures = 0;
    let next = 0;
    let stoppedBy: StopReason | null = null;
    let sql: FanoutReport['sql'] = null;
    const waves: string[][] = [];
    if (options.sql && dryRun && queue.length > 0) {
      // The first tenant alone, so that every statement captured is its own.
      const statements: string[] = [];
      const first = queue[next++]!;
      if ((await runOne(first, statements)).outcome === 'would-fail') failures++;
      sql = { orgId: first.tenant.orgId, schema: first.tenant.schema, statements };
      waves.push([first.tenant.orgId]);
    }
    const begun = new Set<Queued>(queue.slice(0, next));
    for (const [index, end] of pace.ends.entries()) {
      if (next >= end) continue;
      const wave = queue.slice(next, end);
      next = end;
      waves.push(wave.map((q) => q.tenant.orgId));
      options.onWave?.(waves.length, pace.ends.length, wave.length);
      // Each server's tenants on its own pool, as many at once as that pool allows.
      await Promise.all(
        [...groupBy(wave, (q) => serverOf(q.tenant))].map(([server, items]) => {
          let taken = 0;
          const worker = async (): Promise<void> => {
            while (stoppedBy === null && taken < items.length) {
              const item = items[taken++]!;
              begun.add(item);
              const report = await runOne(item);
              if (isFailure(report.outcome) && ++failures >= pace.budget) stoppedBy = 'max-failures';
            }
          };
          const pool = poolMaxOf(ctx, server);
          const concurrency = Math.max(1, Math.min(options.concurrency ?? pool, pool, items.length));
          return Promise.all(Array.from({ length: concurrency }, worker));
        }),
      );
      if (stoppedBy !== null) break;
      // A failure among the canaries, or in a wave of a paced run, stops before the next wave.
      const isCanaryWave = index === 0 && canaries.length > 0;
      if (failures > 0 && begun.size < queue.length && (isCanaryWave || pace.stopBetweenWaves)) {
        stoppedBy = isCanaryWave ? 'canary' : 'wave';
        break;
      }
    }
    const reason = stoppedBy === null ? '' : stopMessage(stoppedBy, pace.budget);
    for (const item of queue) if (!begun.has(item)) emit(skipped(item.tenant, reason));
    const totals = totalsOf(reports, dryRun);
    if (!dryRun) await books.close();
    if (ledgerRun) await finishRun(ctx, ledgerRun, totals);
    return {
      direction: plan.direction,
      dryRun,
      runId: ledgerRun?.id ?? null,
      canaries: canaries.map((q) => q.tenant.orgId),
      waves,
      stoppedBy,
      sql,
      tenants: reports,
      totals,
      durationMs: Date.now() - started,
    };
  } finally {
    ledgerRun?.stopHeartbeat();
  }
}

function isFailure(outcome: TenantOutcome): boolean {
  return outcome === 'failed' || outcome === 'would-fail';
}

/**
 * The canary wave, moved to the front of the queue: the tenants named (`canaryTenants`) or
 * labelled (`canaryLabel`) that have work, or else the first `canary` tenants in registry order.
 */
function canariesFirst(queue: readonly Queued[], options: TenantRunOptions): { queue: Queued[]; canaries: Queued[] } {
  let canaries: Queued[] = [];
  if (options.canaryTenants && options.canaryTenants.length > 0) {
    const named = new Set(options.canaryTenants);
    canaries = queue.filter((q) => named.has(q.tenant.orgId));
  } else if (options.canaryLabel !== undefined) {
    const label = options.canaryLabel;
    canaries = queue.filter((q) => (q.tenant.labels ?? []).includes(label));
  } else if (options.canary) {
    canaries = queue.slice(0, resolveAmount(options.canary, queue.length));
  }
  const chosen = new Set(canaries);
  return { queue: [...canaries, ...queue.filter((q) => !chosen.has(q))], canaries };
}

/**
 * Where the waves end, how many failures stop the run, and whether a failing wave stops it.
 * Exported for `tenants:run` (src/fleet/run.ts), which spends the same failure budget.
 */
export function pacing(
  total: number,
  canaries: number,
  options: Pick<TenantRunOptions, 'failFast' | 'maxFailures' | 'waves'>,
): { ends: number[]; budget: number; stopBetweenWaves: boolean } {
  const budget = options.failFast
    ? 1
    : options.maxFailures
      ? resolveAmount(options.maxFailures, Math.max(total, 1))
      : Number.POSITIVE_INFINITY;
  return {
    ends: waveEnds(total, canaries, options.waves ?? []),
    budget,
    // With waves and no explicit budget, a wave with a failure is the end of the run.
    stopBetweenWaves: (options.waves?.length ?? 0) > 0 && options.maxFailures === undefined,
  };
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
  // Only for tenants on the registry's server: elsewhere no trigger clears the digest when plain
  // Knex changes a tracking table, so those are always read.
  const trustDigest = plan.direction === 'up' && ctx.capabilities.digest && !verify;
  const toScan: { tenant: Tenant; intent: Intent }[] = [];
  for (const tenant of tenants) {
    if (tenant.status !== 'ACTIVE') {
      preliminary.push(skipped(tenant, notActiveReason(tenant.status)));
      continue;
    }
    const intent = plan.intentFor(tenant);
    if ('skip' in intent) preliminary.push(skipped(tenant, intent.skip));
    // A hand-edited row naming `public` (or any non-derived name) is refused by the run, never scanned.
    else if (!isTenantSchemaName(tenant.schema)) queue.push({ tenant, intent, hint: undefined });
    else if (
      trustDigest &&
      serverOf(tenant) === MAIN &&
      tenant.migrationsDigest === localDigest &&
      tenant.lastMigrationError === null
    ) {
      books.noteComplete();
      preliminary.push(upToDate(tenant));
    } else toScan.push({ tenant, intent });
  }
  // Each server's catalog is read on its own pool, the servers at the same time.
  const scanned = await Promise.all(
    [...groupBy(toScan, (t) => serverOf(t.tenant))].map(async ([server, group]) => {
      const found = { queue: [] as Queued[], preliminary: [] as TenantReport[] };
      try {
        await scanGroup(ctx, plan, server, group, books, localDigest, found.queue, found.preliminary);
      } catch (error) {
        if (server === MAIN) throw error;
        // A tenant server that does not answer: its tenants fail with one line; the others go on.
        const why = (await probe(ctx.servers, server)) ?? messageOf(error);
        const reported = new Set([
          ...found.queue.map((q) => q.tenant.schema),
          ...found.preliminary.map((r) => r.schema),
        ]);
        for (const { tenant } of group) if (!reported.has(tenant.schema)) found.preliminary.push(failed(tenant, why));
      }
      return found;
    }),
  );
  for (const found of scanned) {
    queue.push(...found.queue);
    preliminary.push(...found.preliminary);
  }
  if (scanned.length <= 1) return { queue, preliminary };
  // Registry order, whichever server answered first (canaries and waves count in this order).
  const order = new Map(tenants.map((t, i) => [t.schema, i]));
  const byRegistry = (a: string, b: string): number => (order.get(a) ?? 0) - (order.get(b) ?? 0);
  queue.sort((a, b) => byRegistry(a.tenant.schema, b.tenant.schema));
  preliminary.sort((a, b) => byRegistry(a.schema, b.schema));
  return { queue, preliminary };
}

/** Reads one server's tenants' tracking tables (a few catalog round trips) and sorts them. */
async function scanGroup(
  ctx: FanoutContext,
  plan: FanoutPlan,
  server: string,
  group: readonly { tenant: Tenant; intent: Intent }[],
  books: RunBooks,
  localDigest: string,
  queue: Queued[],
  preliminary: TenantReport[],
): Promise<void> {
  const bySchema = new Map(group.map((t) => [t.tenant.schema, t]));
  const schemas = group.map((t) => t.tenant.schema);
  const parallel = Math.min(4, poolMaxOf(ctx, server));
  for await (const states of scanSchemas(knexOf(ctx, server), schemas, TENANT_TRACKING_TABLE, parallel)) {
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
}

/**
 * Under the tenant's lock (taken on its server), its registry row must still say ACTIVE on that
 * server: a `tenant:move` that finished (or started) while the run was queued would otherwise
 * have the batch applied to a copy the registry no longer serves.
 */
async function stillHere(ctx: FanoutContext, tenant: Tenant, conn: Knex | Knex.Transaction): Promise<true> {
  const server = serverOf(tenant);
  // On the main server, read in the batch's own transaction (a statement after the lock sees what committed before it).
  const registry = server === MAIN ? conn : ctx.knex;
  const result = await registry.raw('select status, server from public.tenants where schema_name = ?', [tenant.schema]);
  const row = result.rows[0] as { status: string; server: string | null } | undefined;
  const now = row ? (row.server ?? MAIN) : undefined;
  if (row?.status === 'ACTIVE' && now === server) return true;
  const what = !row
    ? 'is no longer registered'
    : now !== server
      ? `moved to server ${now} while the run was queued`
      : `is ${row.status} (e.g. being moved)`;
  throw new ToolkitError(
    'E_TENANT_CHANGED',
    `${tenant.orgId} (${tenant.schema}) ${what}: not migrated on ${server}; run again`,
  );
}

/** The server a tenant lives on (`main` for a registry row without one). */
export function serverOf(tenant: Tenant): string {
  return tenant.server ?? MAIN;
}

/**
 * A tenant's server's Knex; throws (a one-line UsageError) for a server this configuration does
 * not name. Also `tenants:run`'s (src/fleet/run.ts).
 */
export function knexOf(ctx: { readonly knex: Knex; readonly servers?: TenantServerPools }, server: string): Knex {
  if (server === MAIN) return ctx.knex;
  if (!ctx.servers)
    throw new UsageError(`server ${server} is not configured (TENANT_SERVERS)`, { code: 'E_UNKNOWN_SERVER' });
  return ctx.servers.knexFor(server);
}

function poolMaxOf(ctx: FanoutContext, server: string): number {
  return ctx.servers && server !== MAIN ? ctx.servers.poolMax(server) : ctx.poolMax;
}

/** Groups in first-seen order. */
export function groupBy<T>(items: readonly T[], key: (item: T) => string): Map<string, T[]> {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const k = key(item);
    const group = groups.get(k);
    if (group) group.push(item);
    else groups.set(k, [item]);
  }
  return groups;
}

/** Undefined when the server answers `select 1`; else the one line that says it does not. */
export async function probe(servers: TenantServerPools | undefined, server: string): Promise<string | undefined> {
  let knex: Knex;
  try {
    if (!servers) throw new UsageError(`server ${server} is not configured (TENANT_SERVERS)`);
    knex = servers.knexFor(server);
  } catch (error) {
    return messageOf(error);
  }
  try {
    await knex.raw('select 1');
    return undefined;
  } catch (error) {
    return `server ${server} (${servers.describe(server)}) is unreachable: ${messageOf(error).split('\n')[0]}`;
  }
}

/**
 * The registry rows a run is about, in registry order: every tenant, or the `orgIds` named (each
 * must be registered), narrowed to `labels`. Exported for `tenants:run` (src/fleet/run.ts).
 */
export async function selectTenants(
  ctx: Pick<FanoutContext, 'knex' | 'capabilities'>,
  options: Pick<TenantRunOptions, 'orgIds' | 'labels' | 'canaryLabel' | 'servers'>,
): Promise<Tenant[]> {
  const all = await selectRegistered(ctx, options);
  const servers = options.servers;
  if (!servers || servers.length === 0) return all;
  return all.filter((t) => servers.includes(serverOf(t)));
}

async function selectRegistered(
  ctx: Pick<FanoutContext, 'knex' | 'capabilities'>,
  options: Pick<TenantRunOptions, 'orgIds' | 'labels' | 'canaryLabel'>,
): Promise<Tenant[]> {
  const { knex, capabilities } = ctx;
  const orgIds = options.orgIds;
  const wantsLabels = (options.labels?.length ?? 0) > 0 || options.canaryLabel !== undefined;
  if (wantsLabels && !capabilities.labels) {
    throw new UsageError('This registry has no labels yet: run `pnpm migrate:master` first', { code: 'E_NO_LABELS' });
  }
  const query = {
    withDigest: capabilities.digest,
    withLabels: capabilities.labels,
    withServers: capabilities.servers,
    ...(options.labels && options.labels.length > 0 ? { labels: options.labels } : {}),
  };
  if (orgIds === undefined) return listTenants(knex, query);
  for (const orgId of orgIds) validateOrgId(orgId);
  const { labels: _labels, ...named } = query;
  const tenants = await listTenants(knex, { ...named, orgIds });
  const found = new Set(tenants.map((t) => t.orgId));
  const unknown = orgIds.filter((id) => !found.has(id));
  if (unknown.length > 0) {
    throw new UsageError(`Not registered: ${unknown.join(', ')} (provision them with pnpm provision:tenant)`, {
      code: 'E_UNKNOWN_TENANT',
    });
  }
  // --tenant and --label together: the named tenants that carry one of the labels.
  const labels = options.labels ?? [];
  return labels.length === 0 ? tenants : tenants.filter((t) => t.labels?.some((l) => labels.includes(l)));
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
    notChecked: run.notChecked,
    escapes: run.escapes,
    unguarded: run.unguarded,
  };
}

/** Why a tenant that is not ACTIVE is skipped; archived and deleted tenants are skipped by design, not failed. */
function notActiveReason(status: string): string {
  const why =
    status === 'ARCHIVED'
      ? ' (archived: `tenant:restore` brings it back)'
      : status === 'DELETED'
        ? ' (deleted: its schema was dropped)'
        : '';
  return `status is ${status}, not ACTIVE${why}`;
}

function failed(tenant: Tenant, message: string): TenantReport {
  return { ...base(tenant), outcome: 'failed', error: { migration: null, message, code: 'E_SERVER_DOWN' } };
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
    notChecked: [],
    escapes: [],
    unguarded: [],
  };
}

export function totalsOf(reports: readonly TenantReport[], dryRun = false): Totals {
  const totals: Record<TenantOutcome, number> & { total: number } = {
    migrated: 0,
    'up-to-date': 0,
    failed: 0,
    skipped: 0,
    'would-migrate': 0,
    'would-fail': 0,
    total: reports.length,
  };
  for (const report of reports) totals[report.outcome]++;
  if (dryRun) return totals;
  const { 'would-migrate': _would, 'would-fail': _wouldFail, ...real } = totals;
  return real;
}
