import type { Knex } from 'knex';
import { MAIN_SERVER, type ToolkitConfig } from '../config/config.ts';
import { LOCK_NAMESPACE, lockSession, unlockSession } from '../db/locks.ts';
import { COPY_APPLICATION_NAME, type PgCopyTools, type ServerTarget } from '../db/pg-copy.ts';
import type { Servers } from '../db/servers.ts';
import { messageOf, ToolkitError, UsageError } from '../errors.ts';
import { HEARTBEAT_MS } from '../ledger/ledger.ts';
import type { Capabilities } from '../migrations/books.ts';
import { digestOf } from '../migrations/plan.ts';
import { TENANT_TRACKING_TABLE, tenantTarget } from '../migrations/targets.ts';
import { addTrackingCompanions } from '../migrations/tracking.ts';
import { findTenantByOrgId, type Tenant } from '../tenants/registry.ts';
import { dropTenantRole, ensureTenantRole } from '../tenants/roles.ts';
import { ensureExtensions } from './extensions.ts';
import type { SchemaSnapshot } from './move-verify.ts';

/**
 * The steps of `tenant:move` (src/provisioning/move.ts runs them in order): each a function of
 * the move's plan that either returns what it did or throws StepFailure naming itself.
 */

/** The steps of a move, in order. */
export type MoveStep =
  | 'lock'
  | 'mark'
  | 'quiesce'
  | 'prepare-target'
  | 'dump'
  | 'restore'
  | 'verify'
  | 'switch'
  | 'drop-source';

/** One step as it ran. */
export interface MoveStepReport {
  readonly step: MoveStep;
  readonly ok: boolean;
  readonly durationMs: number;
  /** What it did, or why it failed. */
  readonly detail: string;
}

/** What a move needs of the toolkit. */
export interface MoveContext {
  /** The main server (registry). */
  readonly knex: Knex;
  readonly servers: Servers;
  readonly config: Pick<
    ToolkitConfig,
    'connection' | 'servers' | 'lockTimeoutMs' | 'tenantExtensions' | 'tenantRoles' | 'tenantAppRole'
  >;
}

/** Everything checked before the lock: the tenant, both servers, the tools. */
export interface MovePlan {
  readonly tenant: Tenant;
  readonly from: string;
  readonly to: string;
  readonly source: Knex;
  readonly target: Knex;
  readonly sourceServer: ServerTarget;
  readonly targetServer: ServerTarget;
  readonly tools: PgCopyTools;
  readonly capabilities: Capabilities;
}

/** A step that failed: the move reports it and cleans up. */
export class StepFailure extends Error {
  readonly step: MoveStep;
  readonly code: string | null;
  constructor(step: MoveStep, message: string, code: string | null = null) {
    super(message);
    this.step = step;
    this.code = code;
  }
}

/** The steps as they ran, each timed; a step's error becomes a StepFailure naming it. */
export class StepLog {
  readonly steps: MoveStepReport[] = [];

  async run<T>(step: MoveStep, work: () => Promise<{ value: T; detail: string }>): Promise<T> {
    const t0 = Date.now();
    try {
      const { value, detail } = await work();
      this.steps.push({ step, ok: true, durationMs: Date.now() - t0, detail });
      return value;
    } catch (error) {
      const failure =
        error instanceof StepFailure
          ? error
          : new StepFailure(step, messageOf(error), error instanceof ToolkitError ? error.code : null);
      this.steps.push({ step, ok: false, durationMs: Date.now() - t0, detail: failure.message });
      throw failure;
    }
  }
}

/** Marks a target schema as an unfinished copy: a later move of the same tenant may drop it. */
export function leftoverMarker(orgId: string): string {
  return `tenant-migrate: incomplete move of ${orgId}`;
}

/** The target's schema of that name, if any: whether it is an unfinished copy of this tenant's. */
export async function targetSchema(
  target: Knex,
  schema: string,
  orgId: string,
): Promise<'none' | 'leftover' | 'occupied'> {
  const result = await target.raw(
    "select obj_description(oid, 'pg_namespace') as comment from pg_namespace where nspname = ?",
    [schema],
  );
  const row = result.rows[0] as { comment: string | null } | undefined;
  if (!row) return 'none';
  return row.comment === leftoverMarker(orgId) ? 'leftover' : 'occupied';
}

/**
 * Takes the tenant's session lock on its source server (waiting for a migration in progress; a
 * MOVING tenant's lock must be free, else a move is running) and reads its row again: true when
 * it is MOVING, i.e. a crashed move is being redone. Throws UsageError (lock released) when the
 * tenant changed while we waited.
 */
export async function takeLock(ctx: MoveContext, plan: MovePlan, conn: Knex): Promise<boolean> {
  const { tenant, from } = plan;
  const who = `${tenant.orgId} (${tenant.schema})`;
  if (tenant.status === 'MOVING') {
    const tried = await conn.raw('select pg_try_advisory_lock(?, hashtext(?)) as locked', [
      LOCK_NAMESPACE,
      tenant.schema,
    ]);
    if (!tried.rows[0]?.locked) {
      throw new UsageError(`${who} is being moved right now (its lock on ${from} is held)`, { code: 'E_MOVE_RUNNING' });
    }
  } else await lockSession(conn, tenant.schema);
  const now = await findTenantByOrgId(ctx.knex, tenant.orgId, { withServer: true });
  const where = now?.server ?? MAIN_SERVER;
  let refusal: UsageError | undefined;
  if (!now) refusal = new UsageError(`${tenant.orgId} is no longer registered`, { code: 'E_UNKNOWN_TENANT' });
  else if (where !== from) refusal = new UsageError(`${who} now lives on server ${where}`, { code: 'E_SAME_SERVER' });
  else if (now.status !== 'ACTIVE' && now.status !== 'MOVING') {
    refusal = new UsageError(`${who} is ${now.status}: only an ACTIVE tenant is moved`, { code: 'E_TENANT_STATUS' });
  }
  if (refusal) {
    await unlockSession(conn, tenant.schema);
    throw refusal;
  }
  return now?.status === 'MOVING';
}

/** The registry row MOVING (from ACTIVE, or MOVING again after a crash), still on the source. */
export async function markMoving(knex: Knex, plan: MovePlan): Promise<void> {
  const result = await knex.raw(
    `update public.tenants set status = 'MOVING', updated_at = now()
      where id = ? and status in ('ACTIVE', 'MOVING') and server is not distinct from ?`,
    [plan.tenant.id, serverColumn(plan.from)],
  );
  if (result.rowCount !== 1) throw new StepFailure('mark', 'the registry row changed meanwhile');
}

/**
 * Before the copy, on the source: no deploy, rollback or `tenants:run` may be running (one that
 * listed the tenant before it became MOVING would, once the move releases the lock, change the
 * source copy instead), and every transaction that began before MOVING was set (an application
 * transaction that found the tenant ACTIVE) must have ended, so that the dump holds its writes.
 * Waits up to LOCK_TIMEOUT (0: forever). Sessions of other moves' pg_dump are not waited for.
 */
export async function quiesce(ctx: MoveContext, plan: MovePlan, conn: Knex): Promise<string> {
  if (plan.capabilities.ledger) {
    const runs = await ctx.knex.raw(
      `select id, command from public.tenant_migration_runs
        where outcome = 'running' and kind in ('deploy', 'rollback', 'run')
          and heartbeat_at > now() - make_interval(secs => ?) order by id`,
      [(HEARTBEAT_MS * 4) / 1000],
    );
    const running = runs.rows as { id: string; command: string }[];
    if (running.length > 0) {
      const list = running.map((r) => `#${r.id} ${r.command}`).join(', ');
      throw new StepFailure(
        'quiesce',
        `a fleet run is in progress (${list}): move the tenant once it has finished`,
        'E_RUN_IN_PROGRESS',
      );
    }
  }
  // As text: a JS Date would drop the microseconds.
  const since = (await conn.raw('select now()::text as t')).rows[0].t as string;
  const deadline = ctx.config.lockTimeoutMs > 0 ? Date.now() + ctx.config.lockTimeoutMs : Number.POSITIVE_INFINITY;
  const t0 = Date.now();
  for (;;) {
    const open = await conn.raw(
      `select pid, extract(epoch from now() - xact_start)::int as age from pg_stat_activity
        where datname = current_database() and backend_type = 'client backend' and pid <> pg_backend_pid()
          and xact_start is not null and xact_start < ?::timestamptz and application_name is distinct from ?
        order by xact_start`,
      [since, COPY_APPLICATION_NAME],
    );
    const rows = open.rows as { pid: number; age: number }[];
    if (rows.length === 0) {
      const waited = Date.now() - t0;
      return waited < 50 ? 'no transaction open from before' : `waited ${waited} ms for earlier transactions to end`;
    }
    if (Date.now() >= deadline) {
      throw new StepFailure(
        'quiesce',
        `${rows.length} transaction(s) begun before the move still open on ${plan.from} (pid ${rows[0]!.pid}, ${rows[0]!.age} s) after LOCK_TIMEOUT`,
        'E_MOVE_BUSY',
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** What `prepareTarget` made, for the cleanup and the report. */
export interface PreparedTarget {
  readonly leftoverDropped: boolean;
  readonly roleCreated: boolean;
  /** The source schema's own comment, given to the copy at the switch. */
  readonly sourceComment: string | null;
}

/**
 * On the target: an unfinished copy of this tenant's dropped, the extensions made sure of, the
 * schema created carrying the leftover marker (one transaction), and with TENANT_ROLES the
 * tenant's role, whose default privileges then cover the tables the restore creates.
 */
export async function prepareTarget(ctx: MoveContext, plan: MovePlan, conn: Knex): Promise<PreparedTarget> {
  const { tenant, target, to } = plan;
  const schema = tenant.schema;
  const found = await targetSchema(target, schema, tenant.orgId);
  if (found === 'occupied') throw new StepFailure('prepare-target', `server ${to} has a schema ${schema} meanwhile`);
  if (found === 'leftover') await target.raw('drop schema ?? cascade', [schema]);
  await ensureExtensions(target, ctx.config.tenantExtensions);
  await target.transaction(async (trx) => {
    await trx.raw('create schema ??', [schema]);
    await setSchemaComment(trx, schema, leftoverMarker(tenant.orgId));
  });
  const roleCreated = ctx.config.tenantRoles
    ? (await ensureTenantRole(target, schema, ctx.config.tenantAppRole)) === 'created'
    : false;
  const comment = await conn.raw("select obj_description(to_regnamespace(?)::oid, 'pg_namespace') as c", [schema]);
  return { leftoverDropped: found === 'leftover', roleCreated, sourceComment: (comment.rows[0]?.c as string) ?? null };
}

/** COMMENT takes no bound value: the literal is quoted by the server's own format(). */
export async function setSchemaComment(
  conn: Knex | Knex.Transaction,
  schema: string,
  comment: string | null,
): Promise<void> {
  const sql = await conn.raw(
    "select format('comment on schema %I is %s', ?::text, coalesce(quote_literal(?::text), 'null')) as sql",
    [schema, comment],
  );
  await conn.raw(sql.rows[0].sql as string);
}

/**
 * On the main server, a tenant's tracking tables carry the registry's tracking trigger (its
 * function is in the registry's `public`, so the restore leaves it out everywhere): put back.
 */
export async function addTrackingTrigger(plan: MovePlan): Promise<void> {
  if (plan.to !== MAIN_SERVER || !plan.capabilities.trackingTrigger) return;
  const schema = plan.tenant.schema;
  const result = await plan.target.raw('select to_regclass(format(?, ?::text, ?::text)) is not null as present', [
    '%I.%I',
    schema,
    TENANT_TRACKING_TABLE,
  ]);
  if (!result.rows[0]?.present) return;
  await addTrackingCompanions(plan.target, tenantTarget(schema), { lockTable: false, trigger: true });
}

/**
 * One registry transaction: server = target (null for main), ACTIVE, and the digest of the
 * verified tracking rows. Refused while anyone waits for the tenant's lock on the source (they
 * planned against the source copy). A lost COMMIT reply is settled by reading the row again.
 */
export async function switchRegistry(
  ctx: MoveContext,
  plan: MovePlan,
  conn: Knex,
  snapshot: SchemaSnapshot,
): Promise<void> {
  const { tenant, from, to } = plan;
  // Two-key advisory locks show as (classid, objid, objsubid 2); objid is the second key as an oid.
  const waiting = await conn.raw(
    `select count(*)::int as n from pg_locks
      where locktype = 'advisory' and not granted and objsubid = 2
        and database = (select oid from pg_database where datname = current_database())
        and classid = ?::bigint::oid and objid = ((hashtext(?)::bigint + 4294967296) % 4294967296)::oid`,
    [LOCK_NAMESPACE, tenant.schema],
  );
  if (Number(waiting.rows[0]?.n) > 0) {
    throw new StepFailure(
      'switch',
      `a run is waiting for ${tenant.schema}'s lock on ${from} (it planned against the source): move again once it is done`,
      'E_MOVE_BUSY',
    );
  }
  const names = (snapshot.tracking ?? []).flatMap((row) => (row.name === null ? [] : [row.name]));
  const digest = plan.capabilities.digest ? { migrations_digest: digestOf(names) } : {};
  try {
    const updated = await ctx
      .knex('tenants')
      .withSchema('public')
      .where({ id: tenant.id, status: 'MOVING' })
      .whereRaw('server is not distinct from ?', [serverColumn(from)])
      .update({ server: serverColumn(to), status: 'ACTIVE', updated_at: ctx.knex.fn.now(), ...digest });
    if (updated !== 1) throw new StepFailure('switch', 'the registry row changed meanwhile (no longer MOVING)');
  } catch (error) {
    if (error instanceof StepFailure) throw error;
    // The COMMIT may have happened: the registry decides.
    const now = await findTenantByOrgId(ctx.knex, tenant.orgId, { withServer: true }).catch(() => undefined);
    if (now && (now.server ?? MAIN_SERVER) === to && now.status === 'ACTIVE') return;
    throw error;
  }
}

/** The schema and its tenant role, in one transaction on `conn`'s server. */
export async function dropSchemaAndRole(conn: Knex, schema: string): Promise<void> {
  await conn.transaction(async (trx) => {
    await trx.raw('drop schema if exists ?? cascade', [schema]);
    await dropTenantRole(trx, schema);
  });
}

/** What the cleanup after a failed step did. */
export interface MoveCleanup {
  readonly targetDropped: boolean;
  readonly reverted: boolean;
  readonly problems: readonly string[];
}

/**
 * After a failed step: the copy goes from the target (only a schema carrying this tenant's
 * marker, and only while the registry does not name the target), and the tenant is ACTIVE on
 * its source again (only if it is still MOVING there).
 */
export async function cleanUp(
  ctx: MoveContext,
  plan: MovePlan,
  made: { readonly created: boolean; readonly roleCreated: boolean },
): Promise<MoveCleanup> {
  const { tenant, from, to } = plan;
  const problems: string[] = [];
  let targetDropped = false;
  let reverted = false;
  try {
    const now = await findTenantByOrgId(ctx.knex, tenant.orgId, { withServer: true });
    if (now && (now.server ?? MAIN_SERVER) === to) throw new Error(`the registry names ${to}`);
    if (made.created && (await targetSchema(plan.target, tenant.schema, tenant.orgId)) === 'leftover') {
      await plan.target.transaction(async (trx) => {
        await trx.raw('drop schema ?? cascade', [tenant.schema]);
        if (made.roleCreated) await dropTenantRole(trx, tenant.schema);
      });
      targetDropped = true;
    }
  } catch (error) {
    problems.push(`the copy on ${to} was not dropped (a later move drops it): ${messageOf(error)}`);
  }
  try {
    const result = await ctx.knex.raw(
      `update public.tenants set status = 'ACTIVE', updated_at = now()
        where id = ? and status = 'MOVING' and server is not distinct from ?`,
      [tenant.id, serverColumn(from)],
    );
    reverted = result.rowCount === 1;
  } catch (error) {
    problems.push(
      `${tenant.orgId} could not be set ACTIVE again (it stays MOVING; run tenant:move again): ${messageOf(error)}`,
    );
  }
  return { targetDropped, reverted, problems };
}

/** The registry's `server` value for a server name: null for the main server. */
function serverColumn(name: string): string | null {
  return name === MAIN_SERVER ? null : name;
}
