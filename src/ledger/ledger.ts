import os from 'node:os';
import type { Knex } from 'knex';
import { TOOLKIT_VERSION } from '../version.ts';

/**
 * The run ledger (`public.tenant_migration_runs` and `public.tenant_migration_run_tenants`, made by
 * the master migration `20261202000001_run_ledger.ts`). A run's row is opened when it starts and
 * closed with its counts; a tenant's row is written by the per-tenant unit in the same statement
 * as its tracking rows (see `books.ts`), so the ledger never disagrees with a tenant's schema.
 */
export const RUNS = 'tenant_migration_runs';
export const RUN_TENANTS = 'tenant_migration_run_tenants';

/**
 * `deploy` and `rollback` are fan-out runs; `provision` and `lazy` are one tenant each; `run` is a
 * `tenants:run` (a SQL file or module run in each tenant: it applies no migrations).
 */
export type RunKind = 'deploy' | 'rollback' | 'provision' | 'lazy' | 'run';
/** How a ledger run ended (`running` while it is alive, `interrupted` when its process died). */
export type RunOutcome = 'running' | 'succeeded' | 'failed' | 'interrupted';

/** What a run is, written once when it opens. */
export interface RunIdentity {
  readonly command: string;
  readonly kind: RunKind;
  readonly direction: 'up' | 'down';
  /** The flags or options it was given, as given (JSON). */
  readonly flags: Readonly<Record<string, unknown>>;
  /** Digest of the migration folder's file names (see `digestOf`). */
  readonly folderDigest: string;
  /** For a rollback of one run: that run's id. */
  readonly rollsBack?: number;
}

export interface RunCounts {
  readonly total: number;
  readonly migrated: number;
  readonly 'up-to-date': number;
  readonly failed: number;
  readonly skipped: number;
}

/** A heartbeat older than this, or a holder process gone from this host, marks a `running` run interrupted. */
export const HEARTBEAT_MS = 15_000;
const STALE_AFTER = '60 seconds';

type Conn = Knex | Knex.Transaction;

function identityRow(identity: RunIdentity): Record<string, Knex.RawBinding> {
  return {
    command: identity.command,
    kind: identity.kind,
    direction: identity.direction,
    host: os.hostname(),
    pid: process.pid,
    toolkit_version: TOOLKIT_VERSION,
    folder_digest: identity.folderDigest,
    flags: JSON.stringify(identity.flags),
    rolls_back: identity.rollsBack ?? null,
  };
}

/** An open fan-out run: its id, kept alive by a heartbeat until `closeRun`. */
export interface OpenRun {
  readonly id: number;
  stopHeartbeat(): void;
}

/**
 * Opens a run's row (`running`) on `conn` and starts its heartbeat on `knex` (the pool; `conn`
 * may be a connection the caller is holding, e.g. a `transaction: false` batch's own).
 */
export async function openRun(knex: Knex, identity: RunIdentity, conn: Knex = knex): Promise<OpenRun> {
  const [row] = await conn.withSchema('public').table(RUNS).insert(identityRow(identity)).returning('id');
  const id = Number((row as { id: number | string }).id);
  const timer = setInterval(() => {
    knex
      .raw('update public.?? set heartbeat_at = now() where id = ?', [RUNS, id])
      .catch(() => undefined /* the run's own queries will report a lost server */);
  }, HEARTBEAT_MS);
  timer.unref();
  return { id, stopHeartbeat: () => clearInterval(timer) };
}

/** Closes a run with its counts and outcome. */
export async function closeRun(knex: Knex, run: OpenRun, counts: RunCounts, outcome: RunOutcome): Promise<void> {
  run.stopHeartbeat();
  await knex.raw(
    `update public.?? set outcome = ?, finished_at = now(), heartbeat_at = now(),
            total = ?, migrated = ?, up_to_date = ?, failed = ?, skipped = ? where id = ?`,
    [RUNS, outcome, counts.total, counts.migrated, counts['up-to-date'], counts.failed, counts.skipped, run.id],
  );
}

/** One tenant's line of a run, as the unit writes it. */
export interface TenantLedgerRow {
  readonly schema: string;
  readonly orgId: string | null;
  /** `ran`: a `tenants:run` committed in this tenant. */
  readonly outcome: 'migrated' | 'failed' | 'ran';
  readonly direction: 'up' | 'down';
  readonly migrations: readonly string[];
  readonly batch: number | null;
  readonly error: { readonly message: string; readonly code: string | null; readonly migration: string | null } | null;
  readonly durationMs: number;
}

/**
 * A CTE clause (`<name> as (insert …)`) that writes a tenant's row. Given a run id it upserts
 * into that run (a `transaction: false` batch records step by step, appending); given an
 * identity it first inserts a finished one-tenant run (provisioning, lazy) in the same statement.
 */
export function tenantRowClause(
  run: { readonly id: number } | { readonly identity: RunIdentity },
  row: TenantLedgerRow,
): { readonly sql: string; readonly bindings: readonly Knex.RawBinding[] } {
  const values = [
    row.schema,
    row.orgId,
    row.outcome,
    row.direction,
    [...row.migrations],
    row.batch,
    row.error?.message ?? null,
    row.error?.code?.slice(0, 32) ?? null,
    row.error?.migration ?? null,
    Math.round(row.durationMs),
  ];
  const columns =
    'run_id, schema_name, org_id, outcome, direction, migrations, batch, error, error_code, failed_migration, duration_ms';
  const select = '?, ?, ?, ?, ?::text[], ?, ?, ?, ?, ?';
  const upsert = `on conflict (run_id, schema_name) do update set
      migrations = ${RUN_TENANTS}.migrations || excluded.migrations, outcome = excluded.outcome,
      batch = excluded.batch, error = excluded.error, error_code = excluded.error_code,
      failed_migration = excluded.failed_migration, duration_ms = excluded.duration_ms, recorded_at = now()`;
  if ('id' in run) {
    return {
      sql: `ledger_row as (insert into public.${RUN_TENANTS} (${columns}) values (?, ${select}) ${upsert} returning 1)`,
      bindings: [run.id, ...values],
    };
  }
  const identity = identityRow(run.identity);
  const failed = row.outcome === 'failed' ? 1 : 0;
  const runColumns = Object.keys(identity);
  return {
    sql: `ledger_run as (
        insert into public.${RUNS} (${runColumns.join(', ')}, outcome, finished_at, total, migrated, failed)
        values (${runColumns.map(() => '?').join(', ')}, ?, now(), 1, ?, ?) returning id),
      ledger_row as (insert into public.${RUN_TENANTS} (${columns}) select id, ${select} from ledger_run returning 1)`,
    bindings: [...Object.values(identity), failed ? 'failed' : 'succeeded', 1 - failed, failed, ...values],
  };
}

/** Runs `running` whose holder is gone (its process died on this host, or its heartbeat stopped) become `interrupted`. */
export async function markInterrupted(conn: Conn): Promise<number[]> {
  const result = await conn.raw(
    `select id, host, pid, heartbeat_at < now() - interval '${STALE_AFTER}' as stale from public.?? where outcome = 'running'`,
    [RUNS],
  );
  const here = os.hostname();
  const gone = (result.rows as { id: string; host: string; pid: number; stale: boolean }[])
    .filter((r) => r.stale || (r.host === here && !processAlive(Number(r.pid))))
    .map((r) => Number(r.id));
  if (gone.length > 0) {
    await conn.raw(
      `update public.?? set outcome = 'interrupted', finished_at = coalesce(finished_at, heartbeat_at)
        where id = any(?::bigint[]) and outcome = 'running'`,
      [RUNS, gone],
    );
  }
  return gone;
}

function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** How long per-tenant rows are kept: those of the last `runs` runs, and of every run younger than `days`. */
export interface Retention {
  readonly runs: number;
  readonly days: number;
}

/**
 * Deletes per-tenant rows (and one-tenant runs) older than the retention. Index range scans on
 * the runs' primary key and start time, not a scan of the ledger.
 */
export async function pruneLedger(conn: Conn, retention: Retention): Promise<void> {
  await conn.raw(
    `with cutoff as (
       select least(
         (select id from public.${RUNS} order by id desc offset ? limit 1),
         (select coalesce(min(id), 9223372036854775807) from public.${RUNS} where started_at > now() - make_interval(days => ?))
       ) as id),
     rows as (delete from public.${RUN_TENANTS} where run_id < (select id from cutoff))
     delete from public.${RUNS} where id < (select id from cutoff) and kind in ('provision', 'lazy')`,
    [Math.max(0, retention.runs - 1), retention.days],
  );
}
