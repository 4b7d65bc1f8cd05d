import type { Knex } from 'knex';
import { withDedicatedConnection } from '../db/dedicated.ts';
import { lockForTransaction, lockSession, unlockSession } from '../db/locks.ts';
import { sqlState } from '../db/pg-errors.ts';
import { describeError, ToolkitError } from '../errors.ts';
import { type AppliedMigration, appliedAfter, type Direction, digestOf, type Plan, planDown, planUp } from './plan.ts';
import type { Migration } from './source.ts';

/** Where one run happens: the schema that holds the tracking table and goes first on the path. */
export interface SchemaTarget {
  readonly schema: string;
  readonly trackingTable: string;
  /** The search_path value for the run, e.g. `"tid_cf4116b064", public`. */
  readonly searchPath: string;
  /** Also create Knex's `<table>_lock` table, so that the knex CLI can read the history. */
  readonly knexLockTable?: boolean;
  /** Keep `public.tenants.migrations_digest` of this schema in step with its tracking rows. */
  readonly registryDigest?: boolean;
}

export interface RunSettings {
  /** `lock_timeout` inside migration transactions, in ms; 0 waits forever. */
  readonly lockTimeoutMs: number;
  /** The registry has a `migrations_digest` column to keep up to date (see `digestOf`). */
  readonly trackDigest?: boolean;
}

export type MigrationStatus = 'Success' | 'Error' | 'NotExecuted';

export interface MigrationResult {
  readonly name: string;
  readonly direction: Direction;
  readonly status: MigrationStatus;
}

export interface RunFailure {
  readonly migration: string | null;
  readonly message: string;
  /** The toolkit's error code or the PostgreSQL SQLSTATE. */
  readonly code: string | null;
}

/** The report of one schema's run. Runs report failures here; they do not throw them. */
export interface SchemaRunReport {
  readonly schema: string;
  readonly outcome: 'migrated' | 'up-to-date' | 'failed';
  readonly direction: Direction;
  readonly batch: number | null;
  /** Migrations applied (or reverted) and committed by this run. */
  readonly migrations: readonly string[];
  readonly results: readonly MigrationResult[];
  readonly warnings: readonly string[];
  readonly error: RunFailure | null;
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

/** A migration threw; `cause` is the original error. */
export class MigrationFailedError extends ToolkitError {
  readonly migration: string;
  constructor(migration: string, direction: Direction, cause: unknown) {
    super(sqlState(cause) ?? 'E_MIGRATION', `${migration} (${direction}) failed: ${describeError(cause)}`, { cause });
    this.migration = migration;
  }
}

/** How far a run got: its plan, and the steps committed so far. */
interface Progress {
  plan: Plan | undefined;
  readonly done: string[];
}

/**
 * Brings one schema up to date (or rolls it back), as one batch. When every step may run in a
 * transaction, the whole batch and its tracking rows commit together or not at all, under a
 * transaction-scoped advisory lock on the schema and a transaction-local search_path.
 * A batch holding a step that declares `transaction: false` runs on one dedicated connection
 * instead (as Knex does, each step then commits on its own), with the same lock and scoping
 * held at session level and reset before the connection goes back to the pool.
 */
export async function runSchema(
  knex: Knex,
  target: SchemaTarget,
  migrations: readonly Migration[],
  settings: RunSettings,
  direction: Direction,
  options: { all?: boolean } = {},
): Promise<SchemaRunReport> {
  const progress: Progress = { plan: undefined, done: [] };
  try {
    const committed = await knex.transaction(async (trx) => {
      const applied = await scopeAndRead(trx, target, settings);
      progress.plan = planFor(direction, migrations, applied, options.all ?? false);
      // A batch holding a `transaction: false` step runs whole on the dedicated connection, under
      // one session lock, so that no other run can slip in between its parts.
      if (progress.plan.steps.some((m) => !m.transaction)) return [];
      const digest = digestWriter(target, settings, applied, direction);
      if (progress.plan.steps.length === 0) {
        // Queued because its registry digest was stale: put it right, so the next run skips it.
        if (digest) await trx.raw(DIGEST_SQL, [digest([]), target.schema, digest([])]);
        return [];
      }
      return runSteps(
        trx,
        target,
        progress.plan.steps,
        direction,
        progress.plan.batch,
        { stopAtNonTransactional: false },
        digest,
      );
    });
    progress.done.push(...committed);
    if (progress.done.length < progress.plan!.steps.length) {
      await withDedicatedConnection(knex, (conn) =>
        runOutsideTransaction(conn, target, migrations, settings, direction, options, progress),
      );
    }
    return report(target.schema, direction, progress, null);
  } catch (error) {
    return report(target.schema, direction, progress, error);
  }
}

/**
 * Applies pending migrations inside a transaction the caller owns (the provisioner's), after
 * locking and scoping it. Throws on failure; the caller rolls back. Steps that cannot run in a
 * transaction are left for a later `runSchema` and reported as not done.
 */
export async function migrateInTransaction(
  trx: Knex.Transaction,
  target: SchemaTarget,
  migrations: readonly Migration[],
  settings: RunSettings,
  options: { alreadyLocked?: boolean } = {},
): Promise<{ readonly applied: readonly string[]; readonly complete: boolean; readonly batch: number }> {
  const applied = await scopeAndRead(trx, target, settings, options.alreadyLocked ?? false);
  const plan = planFor('up', migrations, applied, false);
  const done = await runSteps(
    trx,
    target,
    plan.steps,
    'up',
    plan.batch,
    { stopAtNonTransactional: true },
    digestWriter(target, settings, applied, 'up'),
  );
  return { applied: done, complete: done.length === plan.steps.length, batch: plan.batch };
}

function planFor(
  direction: Direction,
  migrations: readonly Migration[],
  applied: readonly AppliedMigration[],
  all: boolean,
): Plan {
  const plan = direction === 'up' ? planUp(migrations, applied) : planDown(migrations, applied, all);
  if (plan.missing.length > 0) throw new MissingFilesError(plan.missing);
  return plan;
}

/**
 * Locks the schema, sets search_path and lock_timeout for this transaction only, checks the
 * schema exists (PostgreSQL would silently skip a missing one and fall through to public),
 * creates the tracking table if needed (race-free: we hold the schema's lock), and reads it.
 */
async function scopeAndRead(
  trx: Knex.Transaction,
  target: SchemaTarget,
  settings: RunSettings,
  alreadyLocked = false,
): Promise<AppliedMigration[]> {
  // The lock comes first and alone: lock_timeout must not cut short a wait for another run of ours,
  // and the tracking table must be read in a statement that starts after the lock is granted.
  if (!alreadyLocked) await lockForTransaction(trx, target.schema);
  const result = await trx.raw(
    `select set_config('search_path', ?, true) as search_path,
            set_config('lock_timeout', ?, true) as lock_timeout,
            exists (select 1 from pg_namespace where nspname = ?) as schema_exists,
            to_regclass(format('%I.%I', ?::text, ?::text)) is not null as tracked`,
    [target.searchPath, `${settings.lockTimeoutMs}ms`, target.schema, target.schema, target.trackingTable],
  );
  const row = result.rows[0] as { schema_exists: boolean; tracked: boolean };
  if (!row.schema_exists) throw new SchemaMissingError(target.schema);
  if (!row.tracked) {
    await createTrackingTables(trx, target);
    return [];
  }
  return readApplied(trx, target);
}

async function readApplied(conn: Knex | Knex.Transaction, target: SchemaTarget): Promise<AppliedMigration[]> {
  const result = await conn.raw('select name, batch from ??.?? order by id', [target.schema, target.trackingTable]);
  return result.rows.map((row: { name: string; batch: number }) => ({ name: row.name, batch: Number(row.batch) }));
}

/** Knex's own tracking-table shape, so that `knex migrate:list` reads the same history. */
async function createTrackingTables(trx: Knex.Transaction, target: SchemaTarget): Promise<void> {
  await trx.schema.withSchema(target.schema).createTable(target.trackingTable, (t) => {
    t.increments();
    t.string('name');
    t.integer('batch');
    t.timestamp('migration_time');
  });
  if (target.knexLockTable) {
    const lockTable = `${target.trackingTable}_lock`;
    // Knex may have made it already (its own CLI creates both tables); one row, unlocked.
    await trx.raw('create table if not exists ??.?? ("index" serial primary key, "is_locked" integer)', [
      target.schema,
      lockTable,
    ]);
    await trx.raw('insert into ??.?? (is_locked) select 0 where not exists (select 1 from ??.??)', [
      target.schema,
      lockTable,
      target.schema,
      lockTable,
    ]);
  }
}

/** Runs steps in order and records them; stops before a non-transactional step when asked. Returns the names run. */
async function runSteps(
  conn: Knex | Knex.Transaction,
  target: SchemaTarget,
  steps: readonly Migration[],
  direction: Direction,
  batch: number,
  options: { stopAtNonTransactional: boolean },
  digest?: DigestOf,
): Promise<string[]> {
  const ran: string[] = [];
  for (const migration of steps) {
    if (options.stopAtNonTransactional && !migration.transaction) break;
    await runOne(conn, migration, direction);
    ran.push(migration.name);
  }
  await record(conn, target, direction, ran, batch, digest?.(ran));
  return ran;
}

/** Gives the registry digest after some names ran, or nothing when the digest is not kept. */
type DigestOf = (ran: readonly string[]) => string;

function digestWriter(
  target: SchemaTarget,
  settings: RunSettings,
  applied: readonly AppliedMigration[],
  direction: Direction,
): DigestOf | undefined {
  if (!target.registryDigest || !settings.trackDigest) return undefined;
  return (ran) => digestOf(appliedAfter(applied, ran, direction));
}

const DIGEST_SQL =
  'update public.tenants set migrations_digest = ? where schema_name = ? and migrations_digest is distinct from ?';

async function runOne(conn: Knex | Knex.Transaction, migration: Migration, direction: Direction): Promise<void> {
  const fn = direction === 'up' ? migration.up : migration.down;
  if (!fn) throw new MigrationFailedError(migration.name, direction, new Error('it has no down function'));
  try {
    await fn(conn as Knex);
  } catch (error) {
    throw new MigrationFailedError(migration.name, direction, error);
  }
}

/**
 * Writes the tracking rows of `names` (or deletes them going down) and, in the same statement,
 * the registry digest when it is kept: one round trip, one transaction.
 */
async function record(
  conn: Knex | Knex.Transaction,
  target: SchemaTarget,
  direction: Direction,
  names: readonly string[],
  batch: number,
  digest: string | undefined,
): Promise<void> {
  if (names.length === 0) return;
  const change =
    direction === 'up'
      ? {
          sql: `insert into ??.?? (name, batch, migration_time) values ${names.map(() => '(?, ?, ?)').join(', ')}`,
          bindings: [target.schema, target.trackingTable, ...names.flatMap((name) => [name, batch, new Date()])],
        }
      : {
          sql: 'delete from ??.?? where name = any(?::text[])',
          bindings: [target.schema, target.trackingTable, [...names]],
        };
  if (digest === undefined) await conn.raw(change.sql, change.bindings);
  else
    await conn.raw(`with change as (${change.sql} returning 1) ${DIGEST_SQL}`, [
      ...change.bindings,
      digest,
      target.schema,
      digest,
    ]);
}

/**
 * A batch that holds `transaction: false` steps, on one dedicated connection:
 * a session-level advisory lock and search_path stand in for the transaction-scoped ones and
 * are released in `finally` (and by the server if the connection dies). Transactional steps
 * still run each in its own transaction with its tracking row.
 */
async function runOutsideTransaction(
  conn: Knex,
  target: SchemaTarget,
  migrations: readonly Migration[],
  settings: RunSettings,
  direction: Direction,
  options: { all?: boolean },
  progress: Progress,
): Promise<void> {
  await lockSession(conn, target.schema);
  try {
    await conn.raw("select set_config('search_path', ?, false), set_config('lock_timeout', ?, false)", [
      target.searchPath,
      `${settings.lockTimeoutMs}ms`,
    ]);
    // Another run may have moved the schema on between our transaction and this lock.
    const applied = await readApplied(conn, target);
    const plan = planFor(direction, migrations, applied, options.all ?? false);
    progress.plan = plan;
    const digest = digestWriter(target, settings, applied, direction);
    for (const migration of plan.steps) {
      const after = digest?.([...progress.done, migration.name]);
      if (migration.transaction) {
        await conn.transaction(async (trx) => {
          await trx.raw("select set_config('search_path', ?, true)", [target.searchPath]);
          await runOne(trx, migration, direction);
          await record(trx, target, direction, [migration.name], plan.batch, after);
        });
      } else {
        await runOne(conn, migration, direction);
        await record(conn, target, direction, [migration.name], plan.batch, after);
      }
      progress.done.push(migration.name);
    }
  } finally {
    // If the connection died, the server already dropped the lock and the session; the
    // dedicated-connection helper discards a connection whose task failed.
    await conn.raw('reset search_path; reset lock_timeout').catch(() => undefined);
    await unlockSession(conn, target.schema).catch(() => undefined);
  }
}

function report(schema: string, direction: Direction, progress: Progress, error: unknown): SchemaRunReport {
  const steps = progress.plan?.steps ?? [];
  const done = progress.done;
  const failedName = error instanceof MigrationFailedError ? error.migration : null;
  const results: MigrationResult[] = steps.map((m) => ({
    name: m.name,
    direction,
    status: done.includes(m.name) ? 'Success' : m.name === failedName ? 'Error' : 'NotExecuted',
  }));
  const outOfOrder = direction === 'up' ? (progress.plan?.outOfOrder ?? []) : [];
  const warnings =
    outOfOrder.length > 0 ? [`pending migrations older than the newest applied one: ${outOfOrder.join(', ')}`] : [];
  if (error !== null) {
    return {
      schema,
      outcome: 'failed',
      direction,
      batch: progress.plan?.batch ?? null,
      migrations: done,
      results,
      warnings,
      error: {
        migration: failedName,
        message: describeError(error),
        code: error instanceof ToolkitError ? error.code : (sqlState(error) ?? null),
      },
    };
  }
  return {
    schema,
    outcome: done.length > 0 ? 'migrated' : 'up-to-date',
    direction,
    batch: done.length > 0 ? (progress.plan?.batch ?? null) : null,
    migrations: done,
    results,
    warnings,
    error: null,
  };
}
