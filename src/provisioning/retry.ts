import type { Knex } from 'knex';
import { MAIN_SERVER } from '../config/config.ts';
import { LOCK_NAMESPACE } from '../db/locks.ts';
import { messageOf, ToolkitError } from '../errors.ts';
import { probeCapabilities } from '../migrations/books.ts';
import type { RunFailure } from '../migrations/unit.ts';
import type { ProvisionReport } from './provisioner.ts';

/**
 * `tenants:retry`: provisioning again every tenant that needs it, found in the registry instead
 * of by hand: every FAILED tenant, and every PROVISIONING tenant whose provisioning is no longer
 * running (its process crashed or was killed).
 *
 * A provisioning in progress holds the tenant's advisory lock (transaction- or session-level,
 * `db/locks.ts`) from the moment it starts creating the schema until it commits; the server drops
 * it when the process or its connection dies. One statement tries that lock, without waiting, for
 * every PROVISIONING tenant: held means running (`in-progress`, left alone), free means crashed.
 * A provisioner in the short window between registering the org and taking the lock looks
 * crashed; retrying it is still safe, as two provisionings of one org queue on the lock and the
 * second finds the tenant ACTIVE (`already-active`). A tenant on another server (TENANT_SERVERS)
 * holds that lock there: its lock is tried on its server.
 */

export type RetryOutcome = 'provisioned' | 'already-active' | 'failed' | 'in-progress';

/** One tenant of `tenants:retry`: provisioned, still failing, or left alone because its provisioning is running. */
export interface RetryTenantReport {
  readonly orgId: string;
  readonly schema: string;
  /** The registry status that made it a candidate: FAILED, or PROVISIONING (crashed or running). */
  readonly previousStatus: 'FAILED' | 'PROVISIONING';
  readonly outcome: RetryOutcome;
  /** Migrations applied by this retry. */
  readonly migrations: readonly string[];
  readonly error: RunFailure | null;
  readonly durationMs: number;
}

/** What `tenants:retry` did: one report per FAILED or crashed tenant, and totals. */
export interface RetryReport {
  readonly tenants: readonly RetryTenantReport[];
  readonly totals: Readonly<Record<RetryOutcome, number>> & { readonly total: number };
  readonly durationMs: number;
}

/** Which tenants `tenants:retry` takes up, and how many at once. */
export interface RetryOptions {
  /** Tenants provisioned at once (default 4, at most the pool size). */
  readonly concurrency?: number;
  /** Called as each tenant finishes. */
  readonly onTenant?: (report: RetryTenantReport) => void;
  /** Tenants on several servers (TENANT_SERVERS): a remote tenant's lock is tried on its server. */
  readonly servers?: { knexFor(name: string): Knex };
}

interface Candidate {
  readonly orgId: string;
  readonly schema: string;
  readonly status: 'FAILED' | 'PROVISIONING';
  readonly running: boolean;
}

/**
 * The candidates in registry order, each PROVISIONING one with whether its provisioning is
 * running: one transaction tries every such tenant's lock (`pg_try_advisory_xact_lock`, never
 * waiting) and ends at once, releasing those it got; one more per other server holding some.
 */
export async function findRetryCandidates(knex: Knex, servers?: { knexFor(name: string): Knex }): Promise<Candidate[]> {
  const withServer = servers !== undefined && (await probeCapabilities(knex)).servers;
  const server = withServer ? 'server' : 'null::text';
  const rows = await knex.transaction(async (trx) => {
    const result = await trx.raw(
      `select clerk_org_id as "orgId", schema_name as schema, status, ${server} as server,
              status = 'PROVISIONING' and ${server} is null and not pg_try_advisory_xact_lock(?, hashtext(schema_name)) as running
         from public.tenants where status in ('FAILED', 'PROVISIONING') order by id`,
      [LOCK_NAMESPACE],
    );
    return result.rows as Record<string, unknown>[];
  });
  const elsewhere = new Map<string, string[]>();
  for (const r of rows) {
    if (r.status !== 'PROVISIONING' || r.server === null || r.server === MAIN_SERVER) continue;
    elsewhere.set(String(r.server), [...(elsewhere.get(String(r.server)) ?? []), String(r.schema)]);
  }
  const running = new Set<string>();
  for (const [name, schemas] of elsewhere) {
    for (const schema of await heldOn(servers!.knexFor(name), schemas)) running.add(schema);
  }
  return rows.map((r) => ({
    orgId: String(r.orgId),
    schema: String(r.schema),
    status: r.status as Candidate['status'],
    running: Boolean(r.running) || running.has(String(r.schema)),
  }));
}

/**
 * Of `schemas`, those whose lock is held on that server right now; none when the server does not
 * answer (their provisioning is then retried, and fails, with the reason).
 */
async function heldOn(knex: Knex, schemas: readonly string[]): Promise<string[]> {
  try {
    return await knex.transaction(async (trx) => {
      const result = await trx.raw(
        `select s as schema from unnest(?::text[]) with ordinality as u(s, n)
          where not pg_try_advisory_xact_lock(?, hashtext(s)) order by n`,
        [[...schemas], LOCK_NAMESPACE],
      );
      return (result.rows as { schema: string }[]).map((r) => r.schema);
    });
  } catch {
    return [];
  }
}

/**
 * Provisions every candidate again with `provision` (the provisioner: it resumes a half-made
 * schema, and its own lock makes a concurrent provisioning of the same org harmless), a few at
 * once. Never throws for a tenant: an error is that tenant's `failed` line.
 */
export async function retryTenants(
  knex: Knex,
  provision: (orgId: string) => Promise<ProvisionReport>,
  options: RetryOptions & { readonly poolMax: number },
): Promise<RetryReport> {
  const started = Date.now();
  const candidates = await findRetryCandidates(knex, options.servers);
  const reports: RetryTenantReport[] = new Array(candidates.length);
  const one = async (candidate: Candidate): Promise<RetryTenantReport> => {
    const t0 = Date.now();
    const base = { orgId: candidate.orgId, schema: candidate.schema, previousStatus: candidate.status };
    if (candidate.running) {
      return { ...base, outcome: 'in-progress', migrations: [], error: null, durationMs: 0 };
    }
    try {
      const run = await provision(candidate.orgId);
      const outcome = run.outcome === 'provisioned' || run.outcome === 'already-active' ? run.outcome : 'failed';
      return {
        ...base,
        schema: run.schema,
        outcome,
        migrations: run.migrations,
        error: run.error,
        durationMs: run.durationMs,
      };
    } catch (error) {
      // Archived meanwhile, an orphan schema in the way, the registry gone: this tenant's failure.
      const code = error instanceof ToolkitError ? error.code : null;
      const failure = { migration: null, message: messageOf(error), code };
      return { ...base, outcome: 'failed', migrations: [], error: failure, durationMs: Date.now() - t0 };
    }
  };
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < candidates.length) {
      const index = next++;
      const report = await one(candidates[index]!);
      reports[index] = report;
      options.onTenant?.(report);
    }
  };
  const concurrency = Math.max(1, Math.min(options.concurrency ?? 4, options.poolMax, candidates.length));
  await Promise.all(Array.from({ length: concurrency }, worker));
  const totals = { provisioned: 0, 'already-active': 0, failed: 0, 'in-progress': 0, total: reports.length };
  for (const report of reports) totals[report.outcome]++;
  return { tenants: reports, totals, durationMs: Date.now() - started };
}
