import type { Knex } from 'knex';
import { tenantSearchPath } from '../db/identifiers.ts';
import { tryLockForTransaction } from '../db/locks.ts';
import { SQLSTATE, sqlState } from '../db/pg-errors.ts';
import { ToolkitError, UsageError } from '../errors.ts';
import { isTenantSchemaName, validateOrgId } from '../tenants/naming.ts';
import { listTenants } from '../tenants/registry.ts';
import type { AppliedMigration } from './plan.ts';

/**
 * Where one schema's run happens: the schema that holds the tracking table and goes first on the
 * search path, and which bookkeeping it keeps besides its tracking rows.
 */
export interface SchemaTarget {
  readonly schema: string;
  readonly trackingTable: string;
  /** The search_path value for the run, e.g. `"tid_cf4116b064", public`. */
  readonly searchPath: string;
  /** Also create Knex's `<table>_lock` table, so that the knex CLI can read the history. */
  readonly knexLockTable?: boolean;
  /**
   * A tenant schema: its registry row (digest, last error) and the run ledger are kept in step
   * with its tracking rows. False for `public` (master migrations).
   */
  readonly tenant?: boolean;
  /**
   * The tenant server holding the schema (`TENANT_SERVERS`), when it is not the registry's own:
   * its registry row and ledger row are then written on the main server after the batch commits.
   */
  readonly server?: string;
}

type Conn = Knex | Knex.Transaction;

/** Reads a tracking table in the order the migrations were applied. */
export async function readApplied(conn: Conn, target: SchemaTarget): Promise<AppliedMigration[]> {
  const result = await conn.raw('select name, batch from ??.?? order by id', [target.schema, target.trackingTable]);
  return result.rows.map((row: { name: string; batch: number }) => ({ name: row.name, batch: Number(row.batch) }));
}

/**
 * `readApplied`, and in the same statement `lock_timeout` set for what follows (for the
 * transaction only when `local`): the unit's waits for its own lock and Knex's come before it.
 */
export async function readAppliedWithTimeout(
  conn: Conn,
  target: SchemaTarget,
  lockTimeoutMs: number,
  local: boolean,
): Promise<AppliedMigration[]> {
  const result = await conn.raw(
    `select set_config('lock_timeout', ?, ?) as lock_timeout,
            coalesce((select json_agg(json_build_array(name, batch) order by id) from ??.??), '[]'::json) as applied`,
    [`${lockTimeoutMs}ms`, local, target.schema, target.trackingTable],
  );
  const rows = (result.rows[0]?.applied ?? []) as [string, number][];
  return rows.map(([name, batch]) => ({ name, batch: Number(batch) }));
}

/**
 * Knex's own tracking-table shape, so that `knex migrate:list` reads the same history, with
 * Knex's `<table>_lock` table beside it (for tenants too: plain `knex migrate:*` against a tenant
 * would otherwise create it racily), and for a tenant the trigger that tells the registry about
 * changes made outside the toolkit (`trigger`: when the master migration made its function).
 * One round trip: the statements carry no bound values (Knex quotes what it inlines), so they go
 * as one simple query; with `lockTimeoutMs`, `lock_timeout` is set for the transaction at its end.
 */
export async function createTrackingTables(
  conn: Conn,
  target: SchemaTarget,
  options: { readonly trigger?: boolean; readonly lockTimeoutMs?: number } = {},
): Promise<void> {
  const create = conn.schema.withSchema(target.schema).createTable(target.trackingTable, (t) => {
    t.increments();
    t.string('name');
    t.integer('batch');
    t.timestamp('migration_time');
  });
  const statements = create.toSQL().map((q) => q.sql);
  if (hasKnexLock(target)) statements.push(...knexLockTableSql(conn, target));
  if (target.tenant && options.trigger) statements.push(...triggersSql(conn, target));
  // For the transaction only: set here when the caller knows the table is new (nothing to wait for).
  if (options.lockTimeoutMs !== undefined)
    statements.push(conn.raw(`select set_config('lock_timeout', ?, true)`, [`${options.lockTimeoutMs}ms`]).toQuery());
  await conn.raw(statements.join(';\n'));
}

/**
 * Adoption of a tracking table the toolkit did not create (plain Knex made it, or the tenant
 * predates these companions): adds what is missing, under the schema's lock.
 */
export async function addTrackingCompanions(
  conn: Conn,
  target: SchemaTarget,
  missing: { readonly lockTable: boolean; readonly trigger: boolean },
): Promise<void> {
  const statements = [
    ...(missing.lockTable ? knexLockTableSql(conn, target) : []),
    ...(missing.trigger ? triggersSql(conn, target) : []),
  ];
  if (statements.length > 0) await conn.raw(statements.join(';\n'));
}

/**
 * The companions for many existing tenant tracking tables at once (e.g. schemas just adopted
 * into the registry, whose digest the fast path will trust from now on): Knex's lock table and,
 * with `trigger`, the tracking trigger. Idempotent; one simple query (one transaction) per chunk
 * of schemas, so that the locks it holds stay well under the server's lock table.
 */
export async function addFleetCompanions(
  knex: Knex,
  schemas: readonly string[],
  trackingTable: string,
  options: { readonly trigger: boolean },
): Promise<void> {
  const chunk = 100;
  for (let start = 0; start < schemas.length; start += chunk) {
    const statements = schemas.slice(start, start + chunk).flatMap((schema) => {
      const target: SchemaTarget = { schema, trackingTable, searchPath: tenantSearchPath(schema), tenant: true };
      return [...knexLockTableSql(knex, target), ...(options.trigger ? triggersSql(knex, target) : [])];
    });
    await knex.raw(statements.join(';\n'));
  }
}

/** Whether the toolkit keeps Knex's lock table beside this tracking table (master and tenants). */
export function hasKnexLock(target: SchemaTarget): boolean {
  return target.knexLockTable === true || target.tenant === true;
}

/** Knex's lock table for a tracking table: `<tracking>_lock`, as Knex names it. */
export function knexLockTableOf(trackingTable: string): string {
  return `${trackingTable}_lock`;
}

function knexLockTableSql(conn: Conn, target: SchemaTarget): string[] {
  const lock = knexLockTableOf(target.trackingTable);
  // Knex may have made it already (its own CLI creates both tables); one row, unlocked, as Knex makes it.
  // The row's "index" is given (1, what serial gives a fresh table; Knex inserts only into an empty
  // one): on Citus this INSERT … SELECT runs on the worker, where nextval() of an int serial fails.
  return [
    conn.raw('create table if not exists ??.?? ("index" serial primary key, "is_locked" integer)', [
      target.schema,
      lock,
    ]),
    conn.raw('insert into ??.?? ("index", "is_locked") select 1, 0 where not exists (select 1 from ??.??)', [
      target.schema,
      lock,
      target.schema,
      lock,
    ]),
  ].map((q) => q.toQuery());
}

/**
 * The registry side of "changes made outside the toolkit": a statement-level trigger on a
 * tenant's tracking table (one call per statement, however many rows a Knex batch writes) that
 * clears the tenant's `migrations_digest` unless the writer is the toolkit, which marks its own
 * writes with the `tenant_migrate.writer` setting. A cleared digest makes the next
 * `migrate:tenants` read that tenant's tracking table instead of trusting the registry. The same
 * trigger sits on Knex's lock table: a tenant whose Knex lock was ever taken by plain Knex (so
 * also one left stuck by a killed Knex) is never trusted by its digest, which lets a status
 * look for stuck locks among the untrusted tenants only (`stuckKnexLocks`).
 */
export const TRACKING_TRIGGER = 'tenant_migrate_tracking_changed';
/** The trigger's function, made in `public` by the master migration `20261202000003_tracking_trigger`. */
export const TRACKING_TRIGGER_FUNCTION = 'public.tenant_migrate_tracking_changed()';
/** The setting that marks a transaction's (or a session's) tracking writes as the toolkit's. */
export const WRITER_SETTING = 'tenant_migrate.writer';

/** The trigger on the tracking table and on Knex's lock table (which must exist by then). */
function triggersSql(conn: Conn, target: SchemaTarget): string[] {
  // OR REPLACE: the master migration may install them for the same tables at the same time.
  return [target.trackingTable, knexLockTableOf(target.trackingTable)].map((table) =>
    conn
      .raw(
        `create or replace trigger ?? after insert or update or delete or truncate on ??.??
           for each statement execute function ${TRACKING_TRIGGER_FUNCTION}`,
        [TRACKING_TRIGGER, target.schema, table],
      )
      .toQuery(),
  );
}

/** Plain Knex holds (or a killed Knex process left) `is_locked = 1` in a tenant's Knex lock table. */
export class KnexLockedError extends ToolkitError {
  constructor(target: SchemaTarget, orgId: string | null) {
    const lock = `${target.schema}.${knexLockTableOf(target.trackingTable)}`;
    const unlock = orgId ? `pnpm migrate:unlock --tenant ${orgId}` : 'pnpm migrate:unlock';
    super(
      'E_KNEX_LOCKED',
      `plain Knex holds ${lock} (is_locked = 1): a knex migrate:* run is in progress, or one was killed; if none is running, clear it with \`${unlock}\``,
    );
  }
}

/**
 * Excludes a plain Knex run on this schema for as long as the caller's hold lasts, and refuses
 * (KnexLockedError) when Knex's flag is set. Call it BEFORE reading the tracking rows: a Knex
 * run that finished while we waited is then seen by the read.
 * - In a transaction (`local`): `SELECT … FOR UPDATE` of Knex's lock row. Knex takes its lock
 *   with `UPDATE … SET is_locked = 1 WHERE is_locked = 0` and frees it with `is_locked = 0` in the
 *   same transaction when it runs its batch in one; either side then waits for the other's
 *   commit, and Knex re-reads its tracking table after the wait, so nothing is applied twice.
 *   A committed `is_locked = 1` is a Knex run outside a transaction (its `migrate:rollback`, or
 *   a batch with `transaction: false` steps), in progress or killed: refused, as Knex refuses.
 * - On a session (`transaction: false` batches): Knex's own protocol, `is_locked = 1` committed;
 *   returns the row to release with `releaseKnexLock`.
 */
export async function holdKnexLock(
  conn: Conn,
  target: SchemaTarget,
  local: boolean,
  orgId: string | null,
): Promise<number[]> {
  const lock = knexLockTableOf(target.trackingTable);
  if (local) {
    const result = await conn.raw('select is_locked from ??.?? for update', [target.schema, lock]);
    if ((result.rows as { is_locked: number }[]).some((r) => Number(r.is_locked) !== 0))
      throw new KnexLockedError(target, orgId);
    return [];
  }
  const taken = await conn.raw('update ??.?? set is_locked = 1 where is_locked = 0 returning "index"', [
    target.schema,
    lock,
  ]);
  const rows = (taken.rows as { index: number }[]).map((r) => Number(r.index));
  if (rows.length > 0) return rows;
  const held = await conn.raw('select exists (select 1 from ??.?? where is_locked <> 0) as held', [
    target.schema,
    lock,
  ]);
  if (held.rows[0]?.held) throw new KnexLockedError(target, orgId);
  return []; // an empty lock table (Knex's forceFreeMigrationsLock between its delete and insert): nothing to hold
}

/** Gives back the Knex lock rows a session-mode run took (`holdKnexLock` with `local` false). */
export async function releaseKnexLock(conn: Conn, target: SchemaTarget, rows: readonly number[]): Promise<void> {
  if (rows.length === 0) return;
  await conn.raw('update ??.?? set is_locked = 0 where "index" = any(?::int[])', [
    target.schema,
    knexLockTableOf(target.trackingTable),
    [...rows],
  ]);
}

/**
 * The schemas among `schemas` whose Knex lock row says `is_locked = 1` (a plain Knex run outside
 * a transaction in progress, or one that was killed), in one query per 500 schemas (each lock
 * table read by a tiny dynamic query, `query_to_xml`: ~0.35 ms a schema on a warm server).
 * Schemas without the lock table are skipped. With the tracking trigger installed, a stuck lock
 * always comes with a cleared digest, so a status passes only the tenants it does not trust.
 */
export async function stuckKnexLocks(knex: Conn, schemas: readonly string[], trackingTable: string): Promise<string[]> {
  const lock = knexLockTableOf(trackingTable);
  const stuck: string[] = [];
  // Chunks: each table read holds a lock until its statement ends; keep that well under the lock table.
  for (let start = 0; start < schemas.length; start += STUCK_CHUNK) {
    stuck.push(...(await stuckIn(knex, schemas.slice(start, start + STUCK_CHUNK), lock)));
  }
  return stuck;
}

const STUCK_CHUNK = 500;

async function stuckIn(knex: Conn, schemas: readonly string[], lock: string): Promise<string[]> {
  // CASE, not AND: PostgreSQL may evaluate AND's operands in any order, and a missing table must never be read.
  const result = await knex.raw(
    `select s as schema from unnest(?::text[]) with ordinality as u(s, n)
      where case when to_regclass(format('%I.%I', s, ?::text)) is not null
                 then query_to_xml(format('select 1 as stuck from %I.%I where is_locked <> 0 limit 1', s, ?::text),
                                   false, true, '')::text <> ''
                 else false end
      order by n`,
    [[...schemas], lock, lock],
  );
  return (result.rows as { schema: string }[]).map((r) => r.schema);
}

/** What `clearKnexLock` found and did on one schema. */
export type UnlockOutcome =
  /** `is_locked` was 1 and is 0 now. */
  | 'unlocked'
  /** Nothing to clear. */
  | 'not-locked'
  /** The schema has no Knex lock table. */
  | 'no-lock-table'
  /** A toolkit run holds the schema's lock right now: left alone. */
  | 'toolkit-running'
  /** A Knex run holds the lock row in its open transaction right now: left alone. */
  | 'knex-running';

/**
 * Clears a stuck Knex lock row (`is_locked = 1`) of one schema, only when no session holds the
 * toolkit's lock on it (tried, never waited for, in the same transaction as the update) and no
 * transaction holds the row itself (`NOWAIT`). Like `knex migrate:unlock`, it cannot tell a
 * killed Knex process from a live one running outside a transaction: clear it only when no
 * `knex migrate:*` runs against the tenant.
 */
export async function clearKnexLock(knex: Knex, schema: string, trackingTable: string): Promise<UnlockOutcome> {
  const lock = knexLockTableOf(trackingTable);
  return knex.transaction(async (trx) => {
    const probe = await trx.raw('select to_regclass(format(?, ?::text, ?::text)) is not null as present', [
      '%I.%I',
      schema,
      lock,
    ]);
    if (!probe.rows[0]?.present) return 'no-lock-table';
    if (!(await tryLockForTransaction(trx, schema))) return 'toolkit-running';
    try {
      const rows = await trx.raw('select "index", is_locked from ??.?? for update nowait', [schema, lock]);
      if (!(rows.rows as { is_locked: number }[]).some((r) => Number(r.is_locked) !== 0)) return 'not-locked';
    } catch (error) {
      if (sqlState(error) === SQLSTATE.LOCK_NOT_AVAILABLE) return 'knex-running';
      throw error;
    }
    await trx.raw('update ??.?? set is_locked = 0 where is_locked <> 0', [schema, lock]);
    return 'unlocked';
  });
}

/** One tenant's line in an unlock report. */
export interface UnlockedTenant {
  readonly orgId: string;
  readonly schema: string;
  readonly outcome: UnlockOutcome;
}

/**
 * `migrate:unlock`: clears the stuck Knex lock rows of the tenants named (`orgIds`, each must be
 * registered), or of every registered tenant whose row is stuck (`allStuck`, found in one query).
 */
export async function unlockTenants(
  knex: Knex,
  trackingTable: string,
  which: { readonly orgIds: readonly string[] } | { readonly allStuck: true },
): Promise<UnlockedTenant[]> {
  let tenants: readonly { orgId: string; schema: string }[];
  if ('orgIds' in which) {
    for (const orgId of which.orgIds) validateOrgId(orgId);
    tenants = await listTenants(knex, { orgIds: which.orgIds });
    const found = new Set(tenants.map((t) => t.orgId));
    const unknown = which.orgIds.filter((id) => !found.has(id));
    if (unknown.length > 0) throw new UsageError(`Not registered: ${unknown.join(', ')}`, { code: 'E_UNKNOWN_TENANT' });
  } else {
    const all = await listTenants(knex);
    const stuck = new Set(
      await stuckKnexLocks(
        knex,
        all.map((t) => t.schema),
        trackingTable,
      ),
    );
    tenants = all.filter((t) => stuck.has(t.schema));
  }
  const report: UnlockedTenant[] = [];
  for (const tenant of tenants) {
    // A registry row naming `public` (or any non-derived name) is never touched.
    if (!isTenantSchemaName(tenant.schema)) continue;
    report.push({
      orgId: tenant.orgId,
      schema: tenant.schema,
      outcome: await clearKnexLock(knex, tenant.schema, trackingTable),
    });
  }
  return report;
}

/** The SQL (and bindings) that writes the tracking rows of `names` going up, or deletes them going down. */
export function trackingChange(
  target: SchemaTarget,
  direction: 'up' | 'down',
  names: readonly string[],
  batch: number,
): { readonly sql: string; readonly bindings: readonly Knex.RawBinding[] } {
  if (direction === 'up') {
    const now = new Date();
    return {
      sql: `insert into ??.?? (name, batch, migration_time) values ${names.map(() => '(?, ?, ?)').join(', ')}`,
      bindings: [target.schema, target.trackingTable, ...names.flatMap((name) => [name, batch, now])],
    };
  }
  return {
    sql: 'delete from ??.?? where name = any(?::text[])',
    bindings: [target.schema, target.trackingTable, [...names]],
  };
}
