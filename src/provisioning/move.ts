import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Knex } from 'knex';
import { MAIN_SERVER } from '../config/config.ts';
import { withDedicatedConnection } from '../db/dedicated.ts';
import { unlockSession } from '../db/locks.ts';
import { dumpSchemaCustom, findCopyTools, type PgCopyTools, restoreSchema, type ServerTarget } from '../db/pg-copy.ts';
import { PgDumpUnavailableError } from '../db/pg-dump.ts';
import { UnknownServerError } from '../db/servers.ts';
import { RegistryMissingError, UsageError } from '../errors.ts';
import { probeCapabilities } from '../migrations/books.ts';
import { TRACKING_TRIGGER } from '../migrations/tracking.ts';
import { isTenantSchemaName, validateOrgId } from '../tenants/naming.ts';
import { findTenantByOrgId, serversColumnMissing, type Tenant } from '../tenants/registry.ts';
import {
  addTrackingTrigger,
  cleanUp,
  dropSchemaAndRole,
  type MoveCleanup,
  type MoveContext,
  type MovePlan,
  type MoveStep,
  type MoveStepReport,
  markMoving,
  type PreparedTarget,
  prepareTarget,
  quiesce,
  StepFailure,
  StepLog,
  setSchemaComment,
  switchRegistry,
  takeLock,
  targetSchema,
} from './move-steps.ts';
import { compareSnapshots, type MoveVerification, snapshotSchema, verificationOf } from './move-verify.ts';

export { leftoverMarker } from './move-steps.ts';
export type { MoveCleanup, MoveContext, MoveStep, MoveStepReport };

/**
 * `tenant:move`: a tenant's schema copied to another server with the real pg_dump and
 * pg_restore, verified, and the registry switched in one transaction (docs/servers.md, "Moving a
 * tenant"). The tenant's lock on its source server is held from start to end, so no migration,
 * `tenants:run` or other move of it runs meanwhile; the registry says MOVING, so the runtime
 * refuses it (TenantMovingError) and fan-outs skip it. A failure at any step drops what was
 * restored on the target and sets the tenant ACTIVE on its source again; a crash leaves it MOVING
 * with its lock free, and running the move again redoes it. The source schema is kept until
 * `dropSource` (right after the switch) or `tenant:drop-source`. Not recorded in the run ledger:
 * its kinds are fixed by a master migration and none is a move.
 */

/** What one `tenant:move` did. */
export interface MoveReport {
  readonly orgId: string;
  readonly schema: string;
  readonly from: string;
  readonly to: string;
  /** `moved`: the registry names `to` (even if dropping the source failed afterwards). */
  readonly outcome: 'moved' | 'failed';
  /** The tenant was MOVING with its lock free (a move that crashed), and this run redid it. */
  readonly resumed: boolean;
  readonly steps: readonly MoveStepReport[];
  /** The failed step and why; after the switch only `drop-source` can fail (the tenant is moved). */
  readonly error: { readonly step: MoveStep; readonly message: string; readonly code: string | null } | null;
  /** What the verification compared and found equal; null when it did not pass. */
  readonly verification: MoveVerification | null;
  readonly dumpBytes: number | null;
  readonly tools: { readonly pgDump: string; readonly pgRestore: string };
  /** An unfinished copy of this tenant on the target, left by an earlier failed or crashed move, was dropped first. */
  readonly leftoverDropped: boolean;
  readonly sourceDropped: boolean;
  /** After a failure: the copy dropped from the target, the status set back to ACTIVE, any problem doing so. */
  readonly cleanup: MoveCleanup | null;
  readonly durationMs: number;
}

/** What `tenant:move` is asked: the target server, and whether to drop the source copy after the switch. */
export interface MoveOptions {
  /** The server to move to: `main` or a name of TENANT_SERVERS. */
  readonly to: string;
  /** Drop the source schema (and its tenant role) right after the switch. */
  readonly dropSource?: boolean;
}

/** Test seams of `moveTenant` (not exported from the package entry, not reachable from the CLI or the toolkit). */
export interface MoveHooks {
  /** After the restore, before the verification (e.g. to make the copy differ). */
  readonly afterRestore?: (target: Knex, schema: string) => Promise<void>;
}

/**
 * Moves a tenant to server `to`. Refuses (UsageError, nothing changed) bad input: no servers
 * configured, a registry without the servers column, an unknown or same server, a tenant not
 * ACTIVE (or MOVING after a crash), a target already holding a schema of that name that is not a
 * leftover of this tenant's move, the embedded engine, or missing or too old pg_dump/pg_restore.
 * Past that it reports instead of throwing: `outcome` and the step that failed.
 */
export async function moveTenant(
  ctx: MoveContext,
  orgId: string,
  options: MoveOptions,
  hooks: MoveHooks = {},
): Promise<MoveReport> {
  const started = Date.now();
  const plan = await planMove(ctx, orgId, options.to);
  // One connection to the source for the whole move: its session holds the tenant's lock.
  return withDedicatedConnection(plan.source, (conn) => runMove(ctx, plan, conn, options, hooks, started));
}

async function planMove(ctx: MoveContext, orgId: string, to: string): Promise<MovePlan> {
  validateOrgId(orgId);
  if (ctx.config.servers.length === 0) {
    throw new UsageError('tenant:move needs several servers: no TENANT_SERVERS are configured', {
      code: 'E_NO_SERVERS',
    });
  }
  const capabilities = await probeCapabilities(ctx.knex);
  if (!capabilities.registry) throw new RegistryMissingError();
  if (!capabilities.servers) throw serversColumnMissing();
  if (!ctx.servers.has(to)) throw new UnknownServerError(to, ctx.servers.names);
  const tenant = await registeredTenant(ctx, orgId, to);
  const from = tenant.server ?? MAIN_SERVER;
  const source = ctx.servers.knexFor(from);
  const target = ctx.servers.knexFor(to);
  const [sourceMajor, targetMajor] = await Promise.all([majorOf(source), majorOf(target)]);
  if (targetMajor < sourceMajor) {
    throw new UsageError(
      `server ${to} runs PostgreSQL ${targetMajor}, older than ${from} (${sourceMajor}): a dump is restored into the same or a newer major only`,
      { code: 'E_TARGET_OLDER' },
    );
  }
  if ((await targetSchema(target, tenant.schema, orgId)) === 'occupied') {
    throw new UsageError(
      `server ${to} already has a schema ${tenant.schema} that no move of ${orgId} left unfinished (an older copy? drop it with \`pnpm tenant:drop-source ${orgId} --server ${to}\` once you are sure it is not needed)`,
      { code: 'E_TARGET_OCCUPIED' },
    );
  }
  const sourceServer = serverTarget(ctx, from);
  const targetServer = serverTarget(ctx, to);
  const tools = await copyTools(Math.max(sourceMajor, targetMajor));
  return { tenant, from, to, source, target, sourceServer, targetServer, tools, capabilities };
}

/** The registry row, refused unless it may be moved to `to`. */
async function registeredTenant(ctx: MoveContext, orgId: string, to: string): Promise<Tenant> {
  const tenant = await findTenantByOrgId(ctx.knex, orgId, { withServer: true });
  if (!tenant) {
    throw new UsageError(`Not registered: ${orgId} (provision it with pnpm provision:tenant)`, {
      code: 'E_UNKNOWN_TENANT',
    });
  }
  const who = `${orgId} (${tenant.schema})`;
  const from = tenant.server ?? MAIN_SERVER;
  if (from === to) throw new UsageError(`${who} already lives on server ${to}`, { code: 'E_SAME_SERVER' });
  if (!ctx.servers.has(from)) throw new UnknownServerError(from, ctx.servers.names);
  if (tenant.status !== 'ACTIVE' && tenant.status !== 'MOVING') {
    throw new UsageError(`${who} is ${tenant.status}: only an ACTIVE tenant is moved`, { code: 'E_TENANT_STATUS' });
  }
  // Never a hand-edited name such as `public`: only a schema the toolkit derived is copied and dropped.
  if (!isTenantSchemaName(tenant.schema)) {
    throw new UsageError(`${orgId}'s registry row names schema ${tenant.schema}, not a tenant schema`, {
      code: 'E_SCHEMA_NAME',
    });
  }
  return tenant;
}

function serverTarget(ctx: MoveContext, name: string): ServerTarget {
  const target = name === MAIN_SERVER ? ctx.config.connection : ctx.config.servers.find((s) => s.name === name)?.target;
  if (target?.kind !== 'server') {
    throw new UsageError(
      'tenant:move is not possible with the embedded engine (PGlite): pg_dump and pg_restore need a PostgreSQL server',
      { code: 'E_PG_DUMP_UNAVAILABLE' },
    );
  }
  return target;
}

async function majorOf(knex: Knex): Promise<number> {
  const result = await knex.raw("select current_setting('server_version_num')::int as v");
  return Math.floor(Number(result.rows[0]?.v ?? 0) / 10_000);
}

/** pg_dump and pg_restore, or a refusal naming what is missing and the alternative. */
async function copyTools(serverMajor: number): Promise<PgCopyTools> {
  try {
    return await findCopyTools(serverMajor);
  } catch (error) {
    if (!(error instanceof PgDumpUnavailableError)) throw error;
    throw new UsageError(
      `${error.message}; tenant:move copies with pg_dump and pg_restore only (without them: a manual dump and restore, or logical replication, then the registry row by hand; see docs/servers.md)`,
      { code: error.code },
    );
  }
}

/** What the steps made, for the report and the cleanup. */
interface MoveState {
  prepared: PreparedTarget | null;
  dumpBytes: number | null;
  verification: MoveVerification | null;
}

async function runMove(
  ctx: MoveContext,
  plan: MovePlan,
  conn: Knex,
  options: MoveOptions,
  hooks: MoveHooks,
  started: number,
): Promise<MoveReport> {
  const log = new StepLog();
  // Refusals here are bad input (UsageError, nothing changed yet): this step is timed by hand.
  const t0 = Date.now();
  const resumed = await takeLock(ctx, plan, conn);
  const redo = resumed ? ' (the tenant was MOVING: a crashed move is redone)' : '';
  const detail = `${plan.tenant.schema}'s lock on ${plan.from}${redo}`;
  log.steps.push({ step: 'lock', ok: true, durationMs: Date.now() - t0, detail });
  const state: MoveState = { prepared: null, dumpBytes: null, verification: null };
  const report = (extra: Partial<MoveReport>): MoveReport => ({
    orgId: plan.tenant.orgId,
    schema: plan.tenant.schema,
    from: plan.from,
    to: plan.to,
    outcome: 'failed',
    resumed,
    steps: log.steps,
    error: null,
    verification: state.verification,
    dumpBytes: state.dumpBytes,
    tools: { pgDump: plan.tools.pgDump.path, pgRestore: plan.tools.pgRestore },
    leftoverDropped: state.prepared?.leftoverDropped ?? false,
    sourceDropped: false,
    cleanup: null,
    durationMs: Date.now() - started,
    ...extra,
  });
  try {
    try {
      await copyAndSwitch(ctx, plan, conn, hooks, log, state);
    } catch (error) {
      if (!(error instanceof StepFailure)) throw error;
      const made = { created: state.prepared !== null, roleCreated: state.prepared?.roleCreated ?? false };
      const cleanup = await cleanUp(ctx, plan, made);
      return report({ error: { step: error.step, message: error.message, code: error.code }, cleanup });
    }
    if (!options.dropSource) return report({ outcome: 'moved' });
    try {
      await log.run('drop-source', async () => {
        await dropSchemaAndRole(conn, plan.tenant.schema);
        return { value: undefined, detail: `schema ${plan.tenant.schema} dropped on ${plan.from}` };
      });
      return report({ outcome: 'moved', sourceDropped: true });
    } catch (error) {
      if (!(error instanceof StepFailure)) throw error;
      return report({ outcome: 'moved', error: { step: 'drop-source', message: error.message, code: error.code } });
    }
  } finally {
    // A failure here means a dead connection, which the pool discards (and the server ends its
    // lock with the session): it must not turn a finished move's report into an error.
    await unlockSession(conn, plan.tenant.schema).catch(() => undefined);
  }
}

/** The steps from MOVING to the switch; throws StepFailure at the first that fails. */
async function copyAndSwitch(
  ctx: MoveContext,
  plan: MovePlan,
  conn: Knex,
  hooks: MoveHooks,
  log: StepLog,
  state: MoveState,
): Promise<void> {
  const { tenant, from, to } = plan;
  const schema = tenant.schema;
  await log.run('mark', async () => {
    await markMoving(ctx.knex, plan);
    return { value: undefined, detail: 'registry status MOVING: the runtime refuses the tenant, fan-outs skip it' };
  });
  await log.run('quiesce', async () => ({ value: undefined, detail: await quiesce(ctx, plan, conn) }));
  const prepared = await log.run('prepare-target', async () => {
    const value = await prepareTarget(ctx, plan, conn);
    state.prepared = value;
    const leftover = value.leftoverDropped ? ' (an unfinished copy of an earlier move dropped first)' : '';
    return { value, detail: `schema ${schema} created on ${to}${leftover}` };
  });
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'tenant-move-'));
  try {
    const file = path.join(scratch, `${schema}.dump`);
    await log.run('dump', async () => {
      const { tools, sourceServer: target } = plan;
      const { bytes } = await dumpSchemaCustom({
        tools,
        target,
        schema,
        file,
        lockTimeoutMs: ctx.config.lockTimeoutMs,
      });
      state.dumpBytes = bytes;
      return { value: undefined, detail: `pg_dump --format=custom of ${schema} on ${from}: ${bytes} bytes` };
    });
    await log.run('restore', async () => {
      const { tools, targetServer: target } = plan;
      await restoreSchema({ tools, target, schema, file, skipTriggers: [TRACKING_TRIGGER] });
      await addTrackingTrigger(plan);
      await hooks.afterRestore?.(plan.target, schema);
      return { value: undefined, detail: `pg_restore into ${schema} on ${to}, in one transaction` };
    });
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  const snapshot = await log.run('verify', async () => {
    const [a, b] = await Promise.all([snapshotSchema(conn, schema), snapshotSchema(plan.target, schema)]);
    const differences = compareSnapshots(a, b, { source: from, target: to });
    if (differences.length > 0) {
      throw new StepFailure('verify', `the copy differs from the source: ${differences.join('; ')}`, 'E_MOVE_MISMATCH');
    }
    const v = verificationOf(a);
    const what = `tracking rows ${v.trackingRows}, tables ${v.tables} (rows ${v.rows}), sequences ${v.sequences}, catalog objects ${v.objects}`;
    return { value: a, detail: `equal on both servers: ${what}` };
  });
  state.verification = verificationOf(snapshot);
  await log.run('switch', async () => {
    await switchRegistry(ctx, plan, conn, snapshot);
    // The copy is the tenant's schema now: its marker goes (a failure here only leaves a comment).
    await setSchemaComment(plan.target, schema, prepared.sourceComment).catch(() => undefined);
    return { value: undefined, detail: `registry: ${tenant.orgId} lives on ${to}, ACTIVE` };
  });
}
