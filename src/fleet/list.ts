import type { Knex } from 'knex';
import { RegistryMissingError, UsageError } from '../errors.ts';
import { RUN_TENANTS } from '../ledger/ledger.ts';
import { probeCapabilities } from '../migrations/books.ts';
import type { TenantServerPools } from '../migrations/fanout.ts';
import type { Migration } from '../migrations/source.ts';
import { type AppliedVersion, collectStatus, type StatusReport, type TenantState } from '../migrations/status.ts';

/**
 * `tenants:list`: the registry as a person reads it. Positions come from `collectStatus` (the
 * registry digest where it can be trusted, the tracking table otherwise, exactly as
 * `migrate:status` places tenants); one more registry read adds labels and creation times, and
 * one ledger read the last time migrations changed each schema. Tenants on several servers: each
 * tracking table is read on its tenant's server; a server that does not answer leaves its
 * tenants `unreachable` (their version unknown) and the others listed as usual.
 */

export interface TenantListRow {
  readonly orgId: string;
  readonly schema: string;
  readonly status: string;
  /** Where `migrate:status` places it (`behind`, `up-to-date`, `failed`, …). */
  readonly state: TenantState;
  /** The last tenant migration applied (by name), or null when none is (or it is not ACTIVE, or its server did not answer). */
  readonly version: string | null;
  /** Tenant migrations of the folder not applied yet. */
  readonly pending: number;
  readonly labels: readonly string[];
  /** Provisioning error (FAILED) or the last migration run's error. */
  readonly lastError: string | null;
  readonly createdAt: string;
  /**
   * When a run last applied or reverted migrations here (the run ledger's newest row for the
   * schema); null when the ledger holds none (no ledger, or its rows are past retention).
   */
  readonly lastMigratedAt: string | null;
  /** The server holding its schema (`main` or a TENANT_SERVERS name), when servers are configured. */
  readonly server?: string;
}

/** The registry as `tenants:list` prints it: one row per selected tenant. */
export interface TenantListReport {
  readonly filters: {
    readonly statuses: readonly string[];
    readonly labels: readonly string[];
    readonly behind: boolean;
    /** `--server`, when given. */
    readonly servers?: readonly string[];
  };
  /** Registered tenants before the filters (on the servers asked for, with `servers`). */
  readonly registered: number;
  readonly tenants: readonly TenantListRow[];
  /** The tenant servers that did not answer (absent when every one did). */
  readonly unreachable?: StatusReport['unreachable'];
}

/** Which tenants `tenants:list` shows: filters by status, label and pending work. */
export interface TenantListOptions {
  /** Only these registry statuses (any case). */
  readonly statuses?: readonly string[];
  /** Only tenants carrying one of these labels. */
  readonly labels?: readonly string[];
  /** Only tenants with pending tenant migrations. */
  readonly behind?: boolean;
  /** Read every tracking table instead of trusting registry digests. */
  readonly verify?: boolean;
  readonly parallel?: number;
  /** Only tenants on these servers (`main` is the registry's own). */
  readonly servers?: readonly string[];
  /** Tenants on several servers (TENANT_SERVERS): each tracking table is read on its tenant's server. */
  readonly pools?: TenantServerPools;
}

/** Lists the registry with each tenant's position; filters apply after positions are known. */
export async function listTenantsReport(
  knex: Knex,
  migrations: readonly Migration[],
  options: TenantListOptions = {},
): Promise<TenantListReport> {
  const capabilities = await probeCapabilities(knex);
  if (!capabilities.registry) throw new RegistryMissingError();
  const labels = options.labels ?? [];
  if (labels.length > 0 && !capabilities.labels) {
    throw new UsageError('This registry has no labels yet: run `pnpm migrate:master` first', { code: 'E_NO_LABELS' });
  }
  const versions = new Map<string, AppliedVersion>();
  const status = await collectStatus(knex, [], migrations, {
    verify: options.verify ?? false,
    parallel: options.parallel ?? 1,
    onVersion: (schema, version) => versions.set(schema, version),
    ...(options.pools ? { pools: options.pools } : {}),
    ...(options.servers ? { servers: options.servers } : {}),
  });
  const extras = await registryExtras(knex, capabilities.labels);
  const migrated = capabilities.ledger ? await lastMigrated(knex) : new Map<string, string>();
  const statuses = new Set((options.statuses ?? []).map((s) => s.toUpperCase()));
  const rows: TenantListRow[] = [];
  for (const t of status.tenants) {
    const extra = extras.get(t.orgId);
    const row: TenantListRow = {
      orgId: t.orgId,
      schema: t.schema,
      status: t.status,
      state: t.state,
      version: versions.get(t.schema)?.latest ?? null,
      pending: t.pending.length,
      labels: extra?.labels ?? [],
      lastError: t.error,
      createdAt: extra?.createdAt ?? '',
      lastMigratedAt: migrated.get(t.schema) ?? null,
      ...(t.server !== undefined ? { server: t.server } : {}),
    };
    if (statuses.size > 0 && !statuses.has(row.status)) continue;
    if (labels.length > 0 && !row.labels.some((l) => labels.includes(l))) continue;
    // A tenant whose server did not answer may be behind: it stays listed.
    if (options.behind && row.pending === 0 && row.state !== 'unreachable') continue;
    rows.push(row);
  }
  const servers = options.servers ? { servers: options.servers } : {};
  return {
    filters: { statuses: [...statuses], labels, behind: options.behind ?? false, ...servers },
    registered: status.tenants.length,
    tenants: rows,
    ...(status.unreachable ? { unreachable: status.unreachable } : {}),
  };
}

async function registryExtras(
  knex: Knex,
  withLabels: boolean,
): Promise<Map<string, { labels: string[]; createdAt: string }>> {
  const result = await knex.raw(
    `select clerk_org_id as "orgId", ${withLabels ? 'labels' : "'{}'::text[] as labels"}, created_at as "createdAt"
       from public.tenants`,
  );
  return new Map(
    (result.rows as { orgId: string; labels: string[] | null; createdAt: Date | string }[]).map((r) => [
      r.orgId,
      { labels: r.labels ?? [], createdAt: new Date(r.createdAt).toISOString() },
    ]),
  );
}

/** Schema → when a run last migrated it (either direction), from the ledger's tenant rows. */
async function lastMigrated(knex: Knex): Promise<Map<string, string>> {
  const result = await knex.raw(
    `select schema_name, max(recorded_at) as at from public.?? where outcome = 'migrated' group by schema_name`,
    [RUN_TENANTS],
  );
  return new Map(
    (result.rows as { schema_name: string; at: Date | string }[]).map((r) => [
      r.schema_name,
      new Date(r.at).toISOString(),
    ]),
  );
}
