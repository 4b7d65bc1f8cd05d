import type { Knex } from 'knex';
import { isTenantSchemaName, SCHEMA_PREFIX } from '../tenants/naming.ts';
import { assertRegistry, listTenants } from '../tenants/registry.ts';
import { planUp } from './plan.ts';
import { scanSchemas } from './prescan.ts';
import type { Migration } from './source.ts';
import { MASTER_TARGET, TENANT_TRACKING_TABLE } from './targets.ts';

/** Where one tenant stands. */
export type TenantState = 'up-to-date' | 'behind' | 'failed' | 'schema-missing' | 'not-active';

export interface TenantStatusRow {
  readonly orgId: string;
  readonly schema: string;
  /** The registry status (PROVISIONING, ACTIVE, FAILED, or whatever a hand edit left). */
  readonly status: string;
  readonly state: TenantState;
  readonly applied: number;
  readonly pending: readonly string[];
  /** Applied migrations whose file is gone. */
  readonly missing: readonly string[];
  /** Provisioning error (FAILED) or the last migration error. */
  readonly error: string | null;
}

export interface StatusReport {
  readonly master: {
    readonly applied: readonly { readonly name: string; readonly batch: number }[];
    readonly pending: readonly string[];
    readonly missing: readonly string[];
  };
  readonly registryExists: boolean;
  readonly tenants: readonly TenantStatusRow[];
  /** `tid_…` schemas that no registry row claims. */
  readonly orphans: readonly string[];
  readonly summary: Readonly<Record<TenantState, number>> & { readonly total: number };
}

/**
 * Master history, then every tenant's position, in a few round trips whatever the tenant count.
 * A tenant is `failed` when provisioning failed or its last migration run failed.
 */
export async function collectStatus(
  knex: Knex,
  master: readonly Migration[],
  tenant: readonly Migration[],
  options: { parallel?: number } = {},
): Promise<StatusReport> {
  const masterApplied = await readMaster(knex);
  const masterPlan = planUp(master, masterApplied);
  const summary = { 'up-to-date': 0, behind: 0, failed: 0, 'schema-missing': 0, 'not-active': 0, total: 0 };
  const masterPart = {
    applied: masterApplied,
    pending: masterPlan.steps.map((m) => m.name),
    missing: masterPlan.missing,
  };
  let registryExists = true;
  try {
    await assertRegistry(knex);
  } catch {
    registryExists = false;
  }
  if (!registryExists) return { master: masterPart, registryExists, tenants: [], orphans: [], summary };
  const tenants = await listTenants(knex);
  const rows: TenantStatusRow[] = [];
  const bySchema = new Map(tenants.map((t) => [t.schema, t]));
  for await (const states of scanSchemas(
    knex,
    tenants.map((t) => t.schema),
    TENANT_TRACKING_TABLE,
    options.parallel ?? 1,
  )) {
    for (const [schema, scan] of states) {
      const t = bySchema.get(schema)!;
      const plan = planUp(tenant, scan.applied);
      const state: TenantState =
        t.status === 'FAILED'
          ? 'failed'
          : t.status !== 'ACTIVE'
            ? 'not-active'
            : !isTenantSchemaName(schema)
              ? 'failed'
              : !scan.exists
                ? 'schema-missing'
                : t.lastMigrationError !== null || plan.missing.length > 0
                  ? 'failed'
                  : plan.steps.length > 0
                    ? 'behind'
                    : 'up-to-date';
      summary[state]++;
      summary.total++;
      rows.push({
        orgId: t.orgId,
        schema,
        status: t.status,
        state,
        applied: scan.applied.length,
        pending: plan.steps.map((m) => m.name),
        missing: plan.missing,
        error:
          t.status === 'FAILED'
            ? t.error
            : !isTenantSchemaName(schema)
              ? `registry schema name ${JSON.stringify(schema)} is not a tenant schema (tid_ + hex)`
              : t.lastMigrationError,
      });
    }
  }
  const order = new Map(tenants.map((t, i) => [t.schema, i]));
  rows.sort((a, b) => order.get(a.schema)! - order.get(b.schema)!);
  return { master: masterPart, registryExists, tenants: rows, orphans: await findOrphans(knex), summary };
}

async function readMaster(knex: Knex): Promise<{ name: string; batch: number }[]> {
  const result = await knex.raw('select to_regclass(?) is not null as present', [
    `public.${MASTER_TARGET.trackingTable}`,
  ]);
  if (!result.rows[0]?.present) return [];
  const rows = await knex.withSchema('public').from(MASTER_TARGET.trackingTable).select('name', 'batch').orderBy('id');
  return rows.map((r: { name: string; batch: number }) => ({ name: r.name, batch: Number(r.batch) }));
}

async function findOrphans(knex: Knex): Promise<string[]> {
  const result = await knex.raw(
    `select n.nspname as schema from pg_namespace n
      where starts_with(n.nspname, ?) and not exists (select 1 from public.tenants t where t.schema_name = n.nspname)
      order by 1`,
    [SCHEMA_PREFIX],
  );
  return (result.rows as { schema: string }[]).map((r) => r.schema);
}
