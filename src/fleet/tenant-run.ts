import type { Knex } from 'knex';
import { withDedicatedConnection } from '../db/dedicated.ts';
import { tenantSearchPath } from '../db/identifiers.ts';
import { lockForTransaction, lockSession, unlockSession } from '../db/locks.ts';
import { messageOf, ToolkitError } from '../errors.ts';
import { type OpenRun, tenantRowClause } from '../ledger/ledger.ts';
import { type Escape, findEscapes, GUARD_MARK_COLUMNS, type GuardMark, guardMarkOf } from '../migrations/guard.ts';
import { tenantTarget } from '../migrations/targets.ts';
import { failureOf, type RunFailure, SchemaMissingError, SchemaNameError } from '../migrations/unit.ts';
import { isTenantSchemaName } from '../tenants/naming.ts';
import type { Tenant } from '../tenants/registry.ts';
import type { ResultRow, RunTask, RunTenant, TaskResult } from './task.ts';

/**
 * One tenant of a `tenants:run`, with a migration's machinery: the tenant's advisory lock (the
 * one the migration unit takes, so a run and a migration of the same tenant queue), its search
 * path and lock timeout for that transaction only, the escape guard, then commit (with the
 * tenant's ledger row) or, on a dry-run, rollback. `--no-transaction` runs on one dedicated
 * connection instead (see `inSession`). A failure is reported, never thrown.
 *
 * A tenant on another server than the registry's runs there (its lock, search path and
 * transaction on that server); its ledger row is written on the main server after its commit.
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
  /** The server the tenant lives on (`main` or a TENANT_SERVERS name), when servers are configured. */
  readonly server?: string;
}

/** A run's settings, checked once (see `runAcrossTenants`). */
export interface FleetRunSettings {
  /** Registry statuses run in (upper case). */
  readonly statuses: readonly string[];
  readonly dryRun: boolean;
  readonly transaction: boolean;
  /** The escape guard checks each tenant (not with --allow-outside-schema, ESCAPE_GUARD=off or --no-transaction). */
  readonly guarded: boolean;
  readonly rowLimit: number;
}

/** What every tenant of one run shares: built once, passed down unchanged. */
export interface TenantRunShared {
  /** The main server's: the registry and the ledger (and the tenants that live there). */
  readonly knex: Knex;
  readonly lockTimeoutMs: number;
  readonly task: RunTask;
  readonly settings: FleetRunSettings;
  /** The ledger run, when this run is recorded. */
  readonly run: OpenRun | undefined;
  /** Told what went wrong after a tenant's commit (its ledger row on main), for the run's warnings. */
  readonly warn?: (message: string) => void;
}

/** The server a tenant's schema is on: its Knex, and whether that is another server than the registry's. */
export interface TenantServer {
  readonly knex: Knex;
  readonly remote: boolean;
}

type One = TenantRunShared;

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

/**
 * One tenant: run, report, and its ledger row (in its transaction when it has one and the tenant
 * is on the main server). `where`: the tenant's server (default: the main one).
 */
export async function runInTenant(
  one: One,
  tenant: Tenant,
  where: TenantServer = { knex: one.knex, remote: false },
): Promise<TenantRunReport> {
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
    const result = settings.transaction
      ? await inTransaction(one, where, info, t0)
      : await inSession(one, where, info, t0);
    return finished(tenant, settings, result, null, Date.now() - t0);
  } catch (error) {
    const report = finished(tenant, settings, null, error, Date.now() - t0);
    if (one.run) {
      await writeLedgerRow(one.knex, one, report).catch(
        () => undefined /* the report says it; bookkeeping must not turn it into a crash */,
      );
    }
    return report;
  }
}

async function inTransaction(one: One, where: TenantServer, tenant: RunTenant, t0: number): Promise<TaskResult> {
  const { task, settings } = one;
  let committed: TaskResult;
  try {
    committed = await where.knex.transaction(async (trx) => {
      // The lock first and alone: lock_timeout must not cut short a wait for a migration of this tenant.
      await lockForTransaction(trx, tenant.schema);
      const mark = await scope(trx, tenant.schema, one.lockTimeoutMs, true);
      const result = await task.execute(trx, tenant);
      // Unguarded, the search path is still checked: a session-level SET inside the transaction
      // would outlive its commit on the pooled connection.
      const escapes = settings.guarded
        ? await findEscapes(trx, tenantTarget(tenant.schema), mark)
        : await searchPathEscape(trx, tenant.schema);
      if (escapes.length > 0) throw new RunEscapeError(task.name, tenant.schema, escapes);
      if (settings.dryRun) throw new RollBack(result);
      if (one.run && !where.remote) await writeLedgerRow(trx, one, ran(tenant, Date.now() - t0));
      return result;
    });
  } catch (error) {
    if (error instanceof RollBack) return error.result;
    throw error;
  }
  // On another server: the ledger (on main) after the tenant's commit; the tenant did run.
  if (one.run && where.remote) {
    await writeLedgerRow(one.knex, one, ran(tenant, Date.now() - t0)).catch((error: unknown) =>
      one.warn?.(`${tenant.orgId} (${tenant.schema}) ran, but its ledger row was not written: ${messageOf(error)}`),
    );
  }
  return committed;
}

/**
 * `--no-transaction`: one dedicated connection under the session lock, its search path and lock
 * timeout set for the session, each statement committing on its own. Afterwards the session is
 * put back as the pool handed it out: any transaction block the code left open is rolled back,
 * every setting it changed (`RESET ALL`, which also undoes ours) and its role are reset, and the
 * lock released. A search path changed by the code fails the tenant (it ran somewhere else).
 */
async function inSession(one: One, where: TenantServer, tenant: RunTenant, t0: number): Promise<TaskResult> {
  const { task } = one;
  return withDedicatedConnection(where.knex, async (conn) => {
    await lockSession(conn, tenant.schema);
    try {
      await scope(conn, tenant.schema, one.lockTimeoutMs, false);
      const result = await task.execute(conn, tenant);
      const escapes = await searchPathEscape(conn, tenant.schema);
      if (escapes.length > 0) throw new RunEscapeError(task.name, tenant.schema, escapes);
      // The ledger is on main: for a tenant elsewhere, written there (its statements committed already).
      if (one.run) await writeLedgerRow(where.remote ? one.knex : conn, one, ran(tenant, Date.now() - t0));
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
  settings: FleetRunSettings,
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

/** A tenant not run because its server does not answer (or is not configured): one line. */
export function serverDown(tenant: Tenant, settings: FleetRunSettings, message: string): TenantRunReport {
  return {
    ...skipped(tenant, message),
    outcome: settings.dryRun ? 'would-fail' : 'failed',
    error: { migration: null, message, code: 'E_SERVER_DOWN' },
  };
}

export function skipped(tenant: Tenant, reason: string): TenantRunReport {
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
