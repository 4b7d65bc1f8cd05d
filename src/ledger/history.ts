import type { Knex } from 'knex';
import { markInterrupted, RUN_TENANTS, RUNS, type RunKind, type RunOutcome } from './ledger.ts';

/** One run as `migrate:runs` lists it. */
export interface RunSummary {
  readonly id: number;
  readonly command: string;
  readonly kind: RunKind;
  readonly direction: 'up' | 'down';
  readonly outcome: RunOutcome;
  readonly startedAt: string;
  readonly finishedAt: string | null;
  readonly durationMs: number | null;
  readonly runBy: string;
  readonly host: string;
  readonly toolkitVersion: string;
  readonly folderDigest: string;
  readonly flags: Readonly<Record<string, unknown>>;
  readonly rollsBack: number | null;
  /** Counts as the run closed them; for a run that did not close, counted from its tenant rows. */
  readonly counts: {
    readonly total: number;
    readonly migrated: number;
    readonly upToDate: number;
    readonly failed: number;
    readonly skipped: number;
  };
}

/** One tenant's line of a run. */
export interface RunTenantRow {
  readonly schema: string;
  readonly orgId: string | null;
  readonly outcome: 'migrated' | 'failed' | 'ran';
  readonly direction: 'up' | 'down';
  readonly migrations: readonly string[];
  readonly batch: number | null;
  readonly error: string | null;
  readonly errorCode: string | null;
  readonly failedMigration: string | null;
  readonly durationMs: number;
  readonly recordedAt: string;
}

/** One ledger run with its per-tenant rows (`migrate:runs <id>`). */
export interface RunDetail extends RunSummary {
  readonly tenants: readonly RunTenantRow[];
}

const SUMMARY = `select r.id, r.command, r.kind, r.direction, r.outcome, r.started_at, r.finished_at, r.run_by, r.host,
       r.toolkit_version, r.folder_digest, r.flags, r.rolls_back, r.total, r.up_to_date, r.skipped,
       case when r.finished_at is null or r.outcome = 'interrupted'
            then (select count(*) from public.${RUN_TENANTS} t where t.run_id = r.id and t.outcome = 'migrated')
            else r.migrated end as migrated,
       case when r.finished_at is null or r.outcome = 'interrupted'
            then (select count(*) from public.${RUN_TENANTS} t where t.run_id = r.id and t.outcome = 'failed')
            else r.failed end as failed
  from public.${RUNS} r`;

function toSummary(row: Record<string, unknown>): RunSummary {
  const started = new Date(row.started_at as string);
  const finished = row.finished_at ? new Date(row.finished_at as string) : null;
  return {
    id: Number(row.id),
    command: String(row.command),
    kind: row.kind as RunKind,
    direction: row.direction as 'up' | 'down',
    outcome: row.outcome as RunOutcome,
    startedAt: started.toISOString(),
    finishedAt: finished?.toISOString() ?? null,
    durationMs: finished ? finished.getTime() - started.getTime() : null,
    runBy: String(row.run_by),
    host: String(row.host),
    toolkitVersion: String(row.toolkit_version),
    folderDigest: String(row.folder_digest),
    flags: (typeof row.flags === 'string' ? JSON.parse(row.flags) : row.flags) as Record<string, unknown>,
    rollsBack: row.rolls_back === null ? null : Number(row.rolls_back),
    counts: {
      total: Number(row.total),
      migrated: Number(row.migrated),
      upToDate: Number(row.up_to_date),
      failed: Number(row.failed),
      skipped: Number(row.skipped),
    },
  };
}

/** Recent runs, newest first; one-tenant runs (provisioning, lazy) only with `all`. */
export async function listRuns(knex: Knex, options: { all?: boolean; limit?: number } = {}): Promise<RunSummary[]> {
  await markInterrupted(knex);
  const where = options.all ? '' : "where r.kind in ('deploy', 'rollback', 'run')";
  const result = await knex.raw(`${SUMMARY} ${where} order by r.id desc limit ?`, [options.limit ?? 20]);
  return (result.rows as Record<string, unknown>[]).map(toSummary);
}

/** One run with its tenants, or undefined. */
export async function getRun(knex: Knex, id: number): Promise<RunDetail | undefined> {
  await markInterrupted(knex);
  const result = await knex.raw(`${SUMMARY} where r.id = ?`, [id]);
  const row = result.rows[0] as Record<string, unknown> | undefined;
  if (!row) return undefined;
  const tenants = await knex.raw(
    `select schema_name, org_id, outcome, direction, migrations, batch, error, error_code, failed_migration,
            duration_ms, recorded_at
       from public.?? where run_id = ? order by recorded_at, schema_name`,
    [RUN_TENANTS, id],
  );
  return {
    ...toSummary(row),
    tenants: (tenants.rows as Record<string, unknown>[]).map((t) => ({
      schema: String(t.schema_name),
      orgId: (t.org_id as string | null) ?? null,
      outcome: t.outcome as RunTenantRow['outcome'],
      direction: t.direction as 'up' | 'down',
      migrations: (t.migrations as string[]) ?? [],
      batch: t.batch === null ? null : Number(t.batch),
      error: (t.error as string | null) ?? null,
      errorCode: (t.error_code as string | null) ?? null,
      failedMigration: (t.failed_migration as string | null) ?? null,
      durationMs: Number(t.duration_ms),
      recordedAt: new Date(t.recorded_at as string).toISOString(),
    })),
  };
}

/** The last finished (or interrupted) deploy run that applied something: what `rollback:tenants` undoes. */
export async function lastDeployRun(knex: Knex): Promise<number | undefined> {
  await markInterrupted(knex);
  const result = await knex.raw(
    `select r.id from public.${RUNS} r
      where r.kind = 'deploy' and r.direction = 'up' and r.outcome <> 'running'
        and exists (select 1 from public.${RUN_TENANTS} t where t.run_id = r.id and t.outcome = 'migrated')
      order by r.id desc limit 1`,
  );
  const row = result.rows[0] as { id: string } | undefined;
  return row ? Number(row.id) : undefined;
}

/** What `migrate:status` says of the ledger: the last fan-out run and any interrupted ones. */
export interface LedgerStatus {
  readonly lastRun: RunSummary | null;
  readonly interrupted: readonly RunSummary[];
}

export async function ledgerStatus(knex: Knex): Promise<LedgerStatus> {
  const recent = await listRuns(knex, { limit: 1 });
  const interrupted = await knex.raw(`${SUMMARY} where r.outcome = 'interrupted' order by r.id desc limit 5`);
  return {
    lastRun: recent[0] ?? null,
    interrupted: (interrupted.rows as Record<string, unknown>[]).map(toSummary),
  };
}
