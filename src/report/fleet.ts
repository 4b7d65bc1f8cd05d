import type { Knex } from 'knex';
import { listRuns, type RunSummary } from '../ledger/history.ts';
import { RUN_TENANTS } from '../ledger/ledger.ts';
import { probeCapabilities } from '../migrations/books.ts';
import { digestOf } from '../migrations/plan.ts';
import type { Migration } from '../migrations/source.ts';
import { TOOLKIT_VERSION } from '../version.ts';

/**
 * The fleet report's data: where the fleet stands, aggregated in SQL so that it costs the same
 * few queries at 100 or 100,000 tenants. Individual tenants appear only where a person wants
 * them (the first tenants of each error group, each run's failures), capped with a count of the
 * rest. `--json` prints this object; the HTML page is a rendering of it.
 */

/** How many tenants an error group or a run lists by name; the rest are counted. */
export const LISTED = 20;

/** The registry's name for its own server (a row whose `server` is null). */
const MAIN = 'main';

/** The data of `migrate:report`: versions, states, error groups, recent runs. */
export interface FleetReport {
  readonly generatedAt: string;
  /** Host, port and database name; never a password. */
  readonly database: string;
  readonly toolkitVersion: string;
  readonly tenants: number;
  /** The newest local tenant migration: the version every tenant should reach. */
  readonly target: string | null;
  readonly states: readonly { readonly status: string; readonly count: number }[];
  /**
   * Tenants per latest applied migration (from the registry digest of each tenant's applied set),
   * in folder order; `none` for tenants with nothing applied; `unrecognised` for a digest that is
   * no prefix of the folder (out-of-order applies, files renamed) or none recorded.
   */
  readonly versions: readonly FleetVersion[];
  readonly errors: readonly ErrorGroup[];
  readonly runs: readonly RunWithFailures[];
  /**
   * Tenants per server (`main` first), when the registry places tenants on more than the main
   * server (TENANT_SERVERS); absent otherwise.
   */
  readonly servers?: readonly {
    /** `main` (the registry's own) or a TENANT_SERVERS name. */
    readonly server: string;
    readonly tenants: number;
    readonly active: number;
    /** Tenants with an error recorded (provisioning failed, or the last migration run). */
    readonly failing: number;
  }[];
}

/** One server's share of the fleet (`FleetReport['servers']`'s items). */
export type FleetServer = NonNullable<FleetReport['servers']>[number];

/** One version of the tenant folder and how many tenants stand at it. */
export interface FleetVersion {
  readonly version: string;
  readonly count: number;
  readonly target: boolean;
}

/** Tenants failing with the same error, grouped for the fleet report. */
export interface ErrorGroup {
  /** `provisioning` (status FAILED) or `migration` (the last deploy failed on it). */
  readonly kind: 'provisioning' | 'migration';
  /** The message, with tenant schema names replaced by `tid_…` so that one cause is one group. */
  readonly message: string;
  readonly migration: string | null;
  readonly count: number;
  readonly latest: string;
  /** `server`: when the fleet spans several servers. */
  readonly tenants: readonly { readonly orgId: string; readonly schema: string; readonly server?: string }[];
}

/** A recent ledger run, with the tenants it failed. */
export interface RunWithFailures extends RunSummary {
  readonly failures: readonly { readonly orgId: string | null; readonly schema: string; readonly error: string }[];
}

/** Collects the report: a handful of aggregate queries, whatever the fleet's size. */
export async function collectFleetReport(
  knex: Knex,
  migrations: readonly Migration[],
  where: string,
  options: { runs?: number } = {},
): Promise<FleetReport> {
  const capabilities = await probeCapabilities(knex);
  const database = `${where}/${(await knex.raw('select current_database() as db')).rows[0].db}`;
  const base = {
    generatedAt: new Date().toISOString(),
    database,
    toolkitVersion: TOOLKIT_VERSION,
    target: migrations.at(-1)?.name ?? null,
  };
  if (!capabilities.registry) return { ...base, tenants: 0, states: [], versions: [], errors: [], runs: [] };
  const digest = capabilities.digest ? 'migrations_digest' : 'null::text';
  const grouped = await knex.raw(
    `select status, ${digest} as digest, count(*)::int as n from public.tenants group by 1, 2`,
  );
  const rows = grouped.rows as { status: string; digest: string | null; n: number }[];
  const states = new Map<string, number>();
  for (const row of rows) states.set(row.status, (states.get(row.status) ?? 0) + row.n);
  const servers = capabilities.servers ? await serverShares(knex) : [];
  const spans = servers.some((s) => s.server !== MAIN);
  return {
    ...base,
    tenants: rows.reduce((sum, row) => sum + row.n, 0),
    states: [...states.entries()].map(([status, count]) => ({ status, count })).sort(byStatus),
    versions: versionsOf(
      migrations,
      rows.filter((row) => row.status === 'ACTIVE'),
    ),
    errors: await errorGroups(knex, spans),
    runs: capabilities.ledger ? await recentRuns(knex, options.runs ?? 15) : [],
    ...(spans ? { servers } : {}),
  };
}

/** Tenants per server, the main one first, then by name: one aggregate query. */
async function serverShares(knex: Knex): Promise<FleetServer[]> {
  const result = await knex.raw(
    `select coalesce(server, '${MAIN}') as server, count(*)::int as tenants,
            (count(*) filter (where status = 'ACTIVE'))::int as active,
            (count(*) filter (where (status = 'FAILED' and error is not null) or last_migration_error is not null))::int as failing
       from public.tenants group by 1 order by coalesce(server, '${MAIN}') <> '${MAIN}', 1`,
  );
  return result.rows as FleetServer[];
}

const STATUS_ORDER = ['ACTIVE', 'PROVISIONING', 'FAILED', 'ARCHIVED', 'DELETED'];

function byStatus(a: { status: string }, b: { status: string }): number {
  const rank = (s: string): number => (STATUS_ORDER.includes(s) ? STATUS_ORDER.indexOf(s) : STATUS_ORDER.length);
  return rank(a.status) - rank(b.status) || a.status.localeCompare(b.status);
}

/**
 * Maps each digest to the latest migration of the folder prefix it hashes (a tenant that applied
 * the first k files has the digest of those k names). Pure: unit-tested.
 */
export function versionsOf(
  migrations: readonly Migration[],
  rows: readonly { readonly digest: string | null; readonly n: number }[],
): FleetVersion[] {
  const names = migrations.map((m) => m.name);
  const byDigest = new Map<string, string>([[digestOf([]), 'none']]);
  for (let k = 1; k <= names.length; k++) byDigest.set(digestOf(names.slice(0, k)), names[k - 1]!);
  const counts = new Map<string, number>();
  for (const row of rows) {
    const version = (row.digest !== null && byDigest.get(row.digest)) || 'unrecognised';
    counts.set(version, (counts.get(version) ?? 0) + row.n);
  }
  const order = ['none', ...names, 'unrecognised'];
  const target = names.at(-1) ?? 'none';
  return order
    .filter((version) => counts.has(version) || version === target)
    .map((version) => ({ version, count: counts.get(version) ?? 0, target: version === target }));
}

async function errorGroups(knex: Knex, withServers: boolean): Promise<ErrorGroup[]> {
  const server = withServers ? `, 'server', coalesce(server, '${MAIN}')` : '';
  const result = await knex.raw(
    `with failing as (
       select case when status = 'FAILED' then 'provisioning' else 'migration' end as kind,
              regexp_replace(coalesce(case when status = 'FAILED' then error end, last_migration_error),
                             'tid_[0-9a-f]{10,32}', 'tid_…', 'g') as message,
              clerk_org_id, schema_name, updated_at, id${withServers ? ', server' : ''}
         from public.tenants
        where (status = 'FAILED' and error is not null) or last_migration_error is not null)
     select kind, message, count(*)::int as n, max(updated_at) as latest,
            (array_agg(json_build_object('orgId', clerk_org_id, 'schema', schema_name${server}) order by id))[1:?] as tenants
       from failing group by kind, message order by n desc, message limit 50`,
    [LISTED],
  );
  return (result.rows as Record<string, unknown>[]).map((row) => ({
    kind: row.kind as ErrorGroup['kind'],
    message: String(row.message),
    migration: migrationOf(String(row.message)),
    count: Number(row.n),
    latest: new Date(row.latest as string).toISOString(),
    tenants: row.tenants as ErrorGroup['tenants'],
  }));
}

/** The migration an error message names (`005_x.ts (up) failed: …`), if it names one. */
export function migrationOf(message: string): string | null {
  return /^(\S+\.(?:[cm]?[jt]s|sql)) \((?:up|down)\) failed/.exec(message)?.[1] ?? null;
}

async function recentRuns(knex: Knex, limit: number): Promise<RunWithFailures[]> {
  const runs = await listRuns(knex, { limit });
  if (runs.length === 0) return [];
  const failures = await knex.raw(
    `select run_id, org_id, schema_name, error from (
       select run_id, org_id, schema_name, error,
              row_number() over (partition by run_id order by recorded_at, schema_name) as k
         from public.?? where run_id = any(?::bigint[]) and outcome = 'failed') f
      where k <= ?`,
    [RUN_TENANTS, runs.map((r) => r.id), LISTED],
  );
  const byRun = new Map<number, RunWithFailures['failures'][number][]>();
  for (const row of failures.rows as Record<string, unknown>[]) {
    const list = byRun.get(Number(row.run_id)) ?? [];
    list.push({
      orgId: (row.org_id as string | null) ?? null,
      schema: String(row.schema_name),
      error: String(row.error ?? ''),
    });
    byRun.set(Number(row.run_id), list);
  }
  return runs.map((run) => ({ ...run, failures: byRun.get(run.id) ?? [] }));
}
