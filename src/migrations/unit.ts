import type { Knex } from 'knex';
import { withDedicatedConnection } from '../db/dedicated.ts';
import { lockForTransaction, lockSession, unlockSession } from '../db/locks.ts';
import { sqlState } from '../db/pg-errors.ts';
import { messageOf, ToolkitError } from '../errors.ts';
import { isTenantSchemaName } from '../tenants/naming.ts';
import { probeCapabilities, RunBooks, type TenantRef } from './books.ts';
import {
  type Escape,
  findEscapes,
  GUARD_MARK_COLUMNS,
  type GuardMark,
  guardMarkOf,
  SchemaEscapeError,
} from './guard.ts';
import {
  type AppliedMigration,
  appliedAfter,
  type Direction,
  digestOf,
  type Intent,
  modeOf,
  type Plan,
  planFor,
  UP,
} from './plan.ts';
import type { Migration } from './source.ts';
import {
  addTrackingCompanions,
  createTrackingTables,
  hasKnexLock,
  holdKnexLock,
  knexLockTableOf,
  readApplied,
  readAppliedWithTimeout,
  releaseKnexLock,
  type SchemaTarget,
  TRACKING_TRIGGER,
  WRITER_SETTING,
} from './tracking.ts';

/**
 * The per-tenant unit: everything that happens to one schema's batch, in one place. It takes the
 * schema's lock, scopes the search path, makes the tracking table, plans, chooses the
 * transaction mode before opening anything, runs the steps, writes the bookkeeping through
 * `RunBooks` and returns a report; an expected failure is reported, never thrown. The fan-out,
 * the provisioner, the lazy runtime and master runs are strategies around it: they choose which
 * schemas, on which connection, how many at once.
 */

export interface RunSettings {
  /** `lock_timeout` inside migration transactions, in ms; 0 waits forever. */
  readonly lockTimeoutMs: number;
  /** Check each tenant batch for changes outside its schema (see `guard.ts`); default true. */
  readonly escapeGuard?: boolean;
}

/** What happened to one migration of a schema run. */
export type MigrationStatus = 'Success' | 'Error' | 'NotExecuted';

/** One migration of a schema run: succeeded, failed, not executed (after a failure), or not checked (a dry run's non-transactional step). */
export interface MigrationResult {
  readonly name: string;
  readonly direction: Direction;
  readonly status: MigrationStatus;
}

/** Why a schema run failed: the migration, the error's message and code, as recorded for `migrate:status`. */
export interface RunFailure {
  readonly migration: string | null;
  readonly message: string;
  /** The toolkit's error code or the PostgreSQL SQLSTATE. */
  readonly code: string | null;
}

/** The report of one schema's run. Runs report failures here; they do not throw them. */
export interface SchemaRunReport {
  readonly schema: string;
  /** `would-migrate` / `would-fail`: a dry-run's verdict (its transaction was rolled back). */
  readonly outcome: 'migrated' | 'up-to-date' | 'failed' | 'would-migrate' | 'would-fail';
  readonly direction: Direction;
  readonly batch: number | null;
  /** Migrations applied (or reverted) and committed by this run. */
  readonly migrations: readonly string[];
  readonly results: readonly MigrationResult[];
  readonly warnings: readonly string[];
  readonly error: RunFailure | null;
  /** Dry-run: `transaction: false` migrations (and any after them), not executed. */
  readonly notChecked: readonly string[];
  /** Migrations that declared `allowOutsideSchema`: the escape guard did not check their batch. */
  readonly unguarded: readonly string[];
  /** What escaped the schema, when the escape guard refused the batch. */
  readonly escapes: readonly Escape[];
}

/** A schema on the registry that does not exist in the database. */
export class SchemaMissingError extends ToolkitError {
  constructor(schema: string) {
    super('E_SCHEMA_MISSING', `schema ${schema} does not exist (refusing to run: its tables would land in public)`);
  }
}

/** Applied migrations whose files are gone. */
export class MissingFilesError extends ToolkitError {
  constructor(names: readonly string[]) {
    super('E_MISSING_FILES', `the migration directory is corrupt, applied migrations are missing: ${names.join(', ')}`);
  }
}

/** A rollback of one batch that later batches sit on (roll those back first, or `--cascade`). */
export class RollbackBlockedError extends ToolkitError {
  constructor(batch: number, later: readonly number[]) {
    super('E_ROLLBACK_BLOCKED', `batch ${batch} has later batches on top (${later.join(', ')}): use --cascade`);
  }
}

/** A registry row names a schema the toolkit would not derive (tid_ + hex). */
export class SchemaNameError extends ToolkitError {
  constructor(schema: string) {
    super(
      'E_SCHEMA_NAME',
      `registry schema name ${JSON.stringify(schema)} is not a tenant schema (tid_ + hex); refusing to migrate it`,
    );
  }
}

/** A migration threw; `cause` is the original error. */
export class MigrationFailedError extends ToolkitError {
  readonly migration: string;
  constructor(migration: string, direction: Direction, cause: unknown) {
    super(sqlState(cause) ?? 'E_MIGRATION', `${migration} (${direction}) failed: ${messageOf(cause)}`, { cause });
    this.migration = migration;
  }
}

/** What one run shares across the schemas it visits: built once, passed down unchanged. */
export interface UnitRun {
  readonly knex: Knex;
  readonly migrations: readonly Migration[];
  readonly settings: RunSettings;
  readonly books: RunBooks;
  /**
   * Preflight: run each batch exactly as a real run would (lock, search path, lock timeout,
   * escape guard), then roll it back; write no bookkeeping at all.
   */
  readonly dryRun?: boolean;
}

type Conn = Knex | Knex.Transaction;

/** What the unit is asked to do to one schema. */
export interface UnitRequest {
  readonly intent: Intent;
  /** The tenant, for its ledger row (none for `public`). */
  readonly tenant?: TenantRef;
  /**
   * The tracking rows as a prescan saw them, used to choose the run mode before opening
   * anything (they are read again under the lock). Empty for a schema about to be created;
   * when absent, they are read first.
   */
  readonly hint?: readonly AppliedMigration[];
  /** Under the lock, before anything else: e.g. create the schema. Resolving false stops: nothing to do. */
  readonly prepare?: (conn: Conn) => Promise<boolean>;
  /**
   * With the last step, set the tenant ACTIVE (provisioning, restore): in the batch's transaction
   * when it has one, folded into its bookkeeping statement.
   */
  readonly activate?: boolean;
  /** Collects the SQL the migrations send (a dry-run's `--sql`), with values shown inline. */
  readonly sqlLog?: string[];
}

/** How far a run got: its plan, and the steps committed so far. */
interface Progress {
  plan: Plan | undefined;
  readonly done: string[];
  readonly started: number;
  notChecked: readonly string[];
}

/** The locked plan holds a `transaction: false` step the hint did not: the history changed meanwhile. */
const SWITCH_TO_SESSION = Symbol('switch to session mode');

/**
 * Runs one schema's batch. In `transaction` mode the whole batch, its tracking rows, digest,
 * ledger row and the tenant's activation commit together or not at all, under a
 * transaction-scoped advisory lock and a transaction-local search path. In `session` mode (a
 * step declares `transaction: false`) the batch runs on one dedicated connection under a session
 * lock, each step committing with its own bookkeeping, and the session scoping is reset before
 * the connection goes back to the pool.
 */
export async function migrateSchema(
  run: UnitRun,
  target: SchemaTarget,
  request: UnitRequest,
): Promise<SchemaRunReport> {
  const progress: Progress = { plan: undefined, done: [], started: Date.now(), notChecked: [] };
  try {
    // A registry row naming `public` (or any non-derived name, e.g. edited by hand) is refused, never opened.
    if (request.tenant && !isTenantSchemaName(target.schema)) throw new SchemaNameError(target.schema);
    if (run.dryRun) {
      await preflight(run, target, request, progress);
      return report(target.schema, request.intent.direction, progress, null, true);
    }
    const hint = request.hint ?? (await readHint(run.knex, target));
    let mode = modeOf(planFor(request.intent, run.migrations, hint).steps);
    if (mode === 'transaction' && target.server === undefined) {
      const result = await run.knex.transaction((trx) => inTransaction(run, target, request, progress, trx));
      if (result === SWITCH_TO_SESSION) mode = 'session';
      else progress.done.push(...result);
    } else if (mode === 'transaction') {
      // On another server than the registry's: the registry side is written after the COMMIT, so
      // the schema's lock is held at session level until then (an archive or a move waiting for
      // it must see the registry as this batch leaves it).
      const result = await withDedicatedConnection(run.knex, async (conn) => {
        await lockSession(conn, target.schema);
        try {
          const names = await conn.transaction((trx) => inTransaction(run, target, request, progress, trx));
          if (names !== SWITCH_TO_SESSION) {
            progress.done.push(...names);
            await run.books.settle(target);
          }
          return names;
        } finally {
          await unlockSession(conn, target.schema).catch(() => undefined);
        }
      });
      if (result === SWITCH_TO_SESSION) mode = 'session';
    }
    if (mode === 'session') {
      await withDedicatedConnection(run.knex, (conn) => stepped(run, target, request, progress, conn));
    }
    return report(target.schema, request.intent.direction, progress, null, false);
  } catch (error) {
    const failed = report(target.schema, request.intent.direction, progress, error, run.dryRun ?? false);
    if (run.dryRun) return failed;
    await run.books
      .recordFailure(run.knex, target, request.tenant, {
        direction: failed.direction,
        migrations: failed.migrations,
        batch: failed.batch,
        error: failed.error,
        durationMs: Date.now() - progress.started,
      })
      .catch(() => undefined /* the report says it; bookkeeping must not turn it into a crash */);
    return failed;
  }
}

/** The tracking rows without a lock (a hint for choosing the mode); none when the schema or table is missing. */
async function readHint(knex: Knex, target: SchemaTarget): Promise<AppliedMigration[]> {
  const result = await knex.raw('select to_regclass(format(?, ?::text, ?::text)) is not null as tracked', [
    '%I.%I',
    target.schema,
    target.trackingTable,
  ]);
  return result.rows[0]?.tracked ? readApplied(knex, target) : [];
}

async function inTransaction(
  run: UnitRun,
  target: SchemaTarget,
  request: UnitRequest,
  progress: Progress,
  trx: Knex.Transaction,
): Promise<readonly string[] | typeof SWITCH_TO_SESSION> {
  // The lock comes first and alone: lock_timeout must not cut short a wait for another run of
  // ours, and the tracking table must be read in a statement that starts after it is granted.
  await lockForTransaction(trx, target.schema);
  if (request.prepare && !(await request.prepare(trx))) return [];
  const { applied, mark } = await scopeAndRead(trx, run, target, request, true);
  const plan = checkedPlan(request.intent, run.migrations, applied);
  progress.plan = plan;
  if (modeOf(plan.steps) === 'session') return SWITCH_TO_SESSION;
  const names = plan.steps.map((m) => m.name);
  for (const migration of plan.steps) await runOne(trx, migration, request.intent.direction);
  if (run.settings.escapeGuard !== false) await guard(trx, target, plan.steps, mark);
  await run.books.recordSteps(trx, target, request.tenant, {
    direction: request.intent.direction,
    names,
    batch: plan.batch,
    digest: digestOf(appliedAfter(applied, names, request.intent.direction)),
    durationMs: Date.now() - progress.started,
    activate: request.activate === true,
  });
  return names;
}

/** Session mode, on one dedicated connection; see `migrateSchema`. */
async function stepped(
  run: UnitRun,
  target: SchemaTarget,
  request: UnitRequest,
  progress: Progress,
  conn: Knex,
): Promise<void> {
  const direction = request.intent.direction;
  await lockSession(conn, target.schema);
  // Knex's lock rows this session set (Knex's own protocol for runs outside a transaction).
  let knexHeld: readonly number[] = [];
  try {
    if (request.prepare && !(await request.prepare(conn))) return;
    const scoped = await scopeAndRead(conn, run, target, request, false);
    knexHeld = scoped.knexHeld;
    const applied = scoped.applied;
    const plan = checkedPlan(request.intent, run.migrations, applied);
    progress.plan = plan;
    if (modeOf(plan.steps) === 'transaction') {
      // Another run moved the schema on while we waited for the lock: the batch is transactional
      // now, and takes Knex's lock row the transactional way.
      await releaseKnexLock(conn, target, knexHeld);
      knexHeld = [];
      const names = await conn.transaction((trx) => inTransaction(run, target, request, progress, trx));
      if (names !== SWITCH_TO_SESSION) {
        progress.done.push(...names);
        await run.books.settle(target);
      }
      return;
    }
    await run.books.beforeSteppedBatch(conn, target);
    for (const migration of plan.steps) {
      const step = {
        direction,
        names: [migration.name],
        batch: plan.batch,
        digest: digestOf(appliedAfter(applied, [...progress.done, migration.name], direction)),
        durationMs: 0,
      };
      if (migration.transaction) {
        await conn.transaction(async (trx) => {
          const scoped = await trx.raw(`select set_config('search_path', ?, true), ${GUARD_MARK_COLUMNS}`, [
            target.searchPath,
          ]);
          await runOne(trx, migration, direction);
          if (run.settings.escapeGuard !== false) await guard(trx, target, [migration], guardMarkOf(scoped.rows[0]));
          await run.books.recordSteps(trx, target, request.tenant, {
            ...step,
            durationMs: Date.now() - progress.started,
          });
        });
      } else {
        await runOne(conn, migration, direction);
        await run.books.recordSteps(conn, target, request.tenant, {
          ...step,
          durationMs: Date.now() - progress.started,
        });
      }
      progress.done.push(migration.name);
      await run.books.settle(target);
    }
    if (request.activate) await run.books.activate(conn, target);
  } finally {
    // If the connection died, the server already dropped the lock and the session; the
    // dedicated-connection helper discards a connection whose task failed.
    await releaseKnexLock(conn, target, knexHeld).catch(() => undefined);
    await conn.raw(`reset search_path; reset lock_timeout; reset ${WRITER_SETTING}`).catch(() => undefined);
    await unlockSession(conn, target.schema).catch(() => undefined);
  }
}

function checkedPlan(intent: Intent, migrations: readonly Migration[], applied: readonly AppliedMigration[]): Plan {
  const plan = planFor(intent, migrations, applied);
  if (plan.missing.length > 0) throw new MissingFilesError(plan.missing);
  if (plan.blockedBy.length > 0) throw new RollbackBlockedError(plan.batch, plan.blockedBy);
  return plan;
}

/**
 * Scopes the schema's batch and reads its tracking rows, in this order:
 * 1. one statement: search_path and the toolkit's writer mark (for the transaction only when
 *    `local`; the tracking trigger leaves the digest alone for writes so marked), whether the
 *    schema exists (PostgreSQL would silently skip a missing one and fall through to public),
 *    whether the tracking table, Knex's lock table and the tracking triggers (on both) exist, and the
 *    escape guard's mark;
 * 2. only when something is missing: the tracking table, or what an older or Knex-made one
 *    lacks (race-free: we hold the schema's lock); a tracking table made now in the batch's
 *    transaction is empty and unseen by others, so steps 3 and 4 shrink to a lock_timeout set
 *    in the same round trip;
 * 3. for a tenant, Knex's lock row (`holdKnexLock`), waited for like our own lock;
 * 4. one statement: lock_timeout, and the tracking rows (read after any Knex run we waited for).
 */
async function scopeAndRead(
  conn: Conn,
  run: UnitRun,
  target: SchemaTarget,
  request: UnitRequest,
  local: boolean,
): Promise<{ applied: AppliedMigration[]; mark: GuardMark; knexHeld: readonly number[] }> {
  const result = await conn.raw(
    `select set_config('search_path', ?, ?) as search_path,
            set_config(?, 'on', ?) as writer,
            exists (select 1 from pg_namespace where nspname = ?) as schema_exists,
            to_regclass(format('%I.%I', ?::text, ?::text)) is not null as tracked,
            to_regclass(format('%I.%I', ?::text, ?::text)) is not null as knex_lock,
            (select count(*) from pg_trigger where tgname = ?
               and tgrelid in (to_regclass(format('%I.%I', ?::text, ?::text)),
                               to_regclass(format('%I.%I', ?::text, ?::text)))) = 2 as triggered,
            ${GUARD_MARK_COLUMNS}`,
    [
      target.searchPath,
      local,
      WRITER_SETTING,
      local,
      target.schema,
      target.schema,
      target.trackingTable,
      target.schema,
      knexLockTableOf(target.trackingTable),
      TRACKING_TRIGGER,
      target.schema,
      target.trackingTable,
      target.schema,
      knexLockTableOf(target.trackingTable),
    ],
  );
  const row = result.rows[0] as {
    schema_exists: boolean;
    tracked: boolean;
    knex_lock: boolean;
    triggered: boolean;
    guard_locked: string[];
    guard_type_oid: string;
  };
  if (!row.schema_exists) throw new SchemaMissingError(target.schema);
  const mark = guardMarkOf(row);
  // The trigger's function lives in the registry's `public`: not on another tenant server.
  const trigger = target.tenant === true && target.server === undefined && run.books.capabilities.trackingTrigger;
  if (!row.tracked && !row.knex_lock && local) {
    // Created by this transaction: no other session sees its Knex lock table until COMMIT (so no
    // Knex run to wait for) and it holds no rows; lock_timeout goes in the same round trip.
    await createTrackingTables(conn, target, { trigger, lockTimeoutMs: run.settings.lockTimeoutMs });
    return { applied: [], mark, knexHeld: [] };
  }
  if (!row.tracked) await createTrackingTables(conn, target, { trigger });
  else
    await addTrackingCompanions(conn, target, {
      lockTable: hasKnexLock(target) && !row.knex_lock,
      trigger: trigger && !row.triggered,
    });
  const knexHeld = target.tenant ? await holdKnexLock(conn, target, local, request.tenant?.orgId ?? null) : [];
  try {
    const applied = await readAppliedWithTimeout(conn, target, run.settings.lockTimeoutMs, local);
    return { applied, mark, knexHeld };
  } catch (error) {
    await releaseKnexLock(conn, target, knexHeld).catch(() => undefined);
    throw error;
  }
}

/** Whether a migration opted out of the escape guard. */
function unguarded(migration: Migration): boolean {
  return migration.allowOutsideSchema === true;
}

/**
 * The escape guard (see `guard.ts`), for tenant schemas, in the batch's transaction before its
 * bookkeeping: throws SchemaEscapeError, so the batch rolls back, when it changed anything outside.
 */
async function guard(conn: Conn, target: SchemaTarget, steps: readonly Migration[], mark: GuardMark): Promise<void> {
  if (!target.tenant || steps.length === 0 || steps.some(unguarded)) return;
  const escapes = await findEscapes(conn, target, mark);
  if (escapes.length > 0)
    throw new SchemaEscapeError(
      target.schema,
      steps.map((m) => m.name),
      escapes,
    );
}

/** Ends a dry-run's transaction: thrown after the last check, so everything rolls back. */
const ROLL_BACK = Symbol('dry-run: roll back');

/**
 * A dry-run of one schema: one transaction with the lock, the scoping and the lock timeout of a
 * real run, the transactional steps before the first `transaction: false` one (that one and the
 * rest are reported not checked, never executed), the escape guard, then a rollback. Nothing is
 * recorded, and a failure is reported, not recorded.
 */
async function preflight(run: UnitRun, target: SchemaTarget, request: UnitRequest, progress: Progress): Promise<void> {
  const direction = request.intent.direction;
  try {
    await run.knex.transaction(async (trx) => {
      await lockForTransaction(trx, target.schema);
      if (request.prepare && !(await request.prepare(trx))) throw ROLL_BACK;
      const { applied, mark } = await scopeAndRead(trx, run, target, request, true);
      const plan = checkedPlan(request.intent, run.migrations, applied);
      progress.plan = plan;
      const cut = plan.steps.findIndex((m) => !m.transaction);
      const checked = cut < 0 ? plan.steps : plan.steps.slice(0, cut);
      progress.notChecked = plan.steps.slice(checked.length).map((m) => m.name);
      for (const migration of checked) {
        await runOne(trx, migration, direction, request.sqlLog);
        progress.done.push(migration.name);
      }
      if (run.settings.escapeGuard !== false) await guard(trx, target, checked, mark);
      throw ROLL_BACK;
    });
  } catch (error) {
    if (error !== ROLL_BACK) throw error;
  }
}

async function runOne(conn: Conn, migration: Migration, direction: Direction, sqlLog?: string[]): Promise<void> {
  const fn = direction === 'up' ? migration.up : migration.down;
  if (!fn) throw new MigrationFailedError(migration.name, direction, new Error('it has no down function'));
  // Knex emits 'query' on the transaction for each statement it sends: the migration's own SQL.
  const listener = (query: { sql: string; bindings?: readonly unknown[] }): void => {
    sqlLog?.push(showQuery(conn, query));
  };
  if (sqlLog) conn.on('query', listener);
  try {
    await fn(conn as Knex);
  } catch (error) {
    throw new MigrationFailedError(migration.name, direction, error);
  } finally {
    if (sqlLog) conn.off('query', listener);
  }
}

/** A statement for reading (values inlined by Knex's own quoting; never executed in this form). */
function showQuery(conn: Conn, query: { sql: string; bindings?: readonly unknown[] }): string {
  const bindings = (query.bindings ?? []) as Knex.RawBinding[];
  if (bindings.length === 0) return query.sql;
  try {
    return conn.raw(query.sql, bindings).toQuery();
  } catch {
    return `${query.sql} -- bindings: ${JSON.stringify(bindings)}`;
  }
}

/** The one place an error becomes a run failure. */
export function failureOf(error: unknown): RunFailure {
  return {
    migration: error instanceof MigrationFailedError || error instanceof SchemaEscapeError ? error.migration : null,
    message: messageOf(error),
    code: error instanceof ToolkitError ? error.code : (sqlState(error) ?? null),
  };
}

function report(
  schema: string,
  direction: Direction,
  progress: Progress,
  error: unknown,
  dryRun: boolean,
): SchemaRunReport {
  const steps = progress.plan?.steps ?? [];
  const done = progress.done;
  const failure = error === null ? null : failureOf(error);
  const results: MigrationResult[] = steps.map((m) => ({
    name: m.name,
    direction,
    status: done.includes(m.name) ? 'Success' : m.name === failure?.migration ? 'Error' : 'NotExecuted',
  }));
  const outOfOrder = direction === 'up' ? (progress.plan?.outOfOrder ?? []) : [];
  const warnings =
    outOfOrder.length > 0 ? [`pending migrations older than the newest applied one: ${outOfOrder.join(', ')}`] : [];
  const moved = done.length > 0 || failure !== null || progress.notChecked.length > 0;
  const outcome = failure ? 'failed' : moved ? 'migrated' : 'up-to-date';
  const guarded = (progress.plan?.steps ?? []).filter(unguarded).map((m) => m.name);
  return {
    schema,
    outcome: dryRun && outcome !== 'up-to-date' ? (failure ? 'would-fail' : 'would-migrate') : outcome,
    direction,
    batch: moved ? (progress.plan?.batch ?? null) : null,
    migrations: done,
    results,
    warnings,
    error: failure,
    notChecked: progress.notChecked,
    unguarded: guarded,
    escapes: error instanceof SchemaEscapeError ? error.escapes : [],
  };
}

/**
 * One schema's run on its own (library API): the unit with its bookkeeping (tracking rows,
 * digest, last error), outside any ledger run, checksums left to the caller.
 */
export async function runSchema(
  knex: Knex,
  target: SchemaTarget,
  migrations: readonly Migration[],
  settings: RunSettings,
  direction: Direction,
  options: { all?: boolean } = {},
): Promise<SchemaRunReport> {
  const books = new RunBooks({
    knex,
    capabilities: await probeCapabilities(knex),
    scope: target.tenant ? 'tenant' : 'master',
    migrations,
    recorded: new Set(),
    ledger: { mode: 'none' },
  });
  const intent: Intent =
    direction === 'up' ? UP : { direction: 'down', scope: { kind: options.all ? 'all' : 'last-batch' } };
  return migrateSchema({ knex, migrations, settings, books }, target, { intent });
}
