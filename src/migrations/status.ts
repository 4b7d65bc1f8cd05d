import type { Knex } from 'knex';
import { isTenantSchemaName, SCHEMA_PREFIX } from '../tenants/naming.ts';
import { probeCapabilities } from './books.ts';
import { type AppliedMigration, digestOf, folderDigest, planUp } from './plan.ts';
import { scanSchemas } from './prescan.ts';
import type { MigrationFile } from './source.ts';
import { MASTER_TARGET, TENANT_TRACKING_TABLE } from './targets.ts';
import { stuckKnexLocks } from './tracking.ts';

/** Where one tenant stands. */
export type TenantState = 'up-to-date' | 'behind' | 'failed' | 'schema-missing' | 'not-active';

/** One tenant in `migrate:status`: its state, applied count, pending names, missing files and last error. */
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
  /**
   * Knex's lock row is set (`is_locked = 1`): a plain `knex migrate:*` is running there, or one
   * was killed. The toolkit refuses the tenant until `migrate:unlock` clears it. Checked for the
   * tenants whose tracking table is read (a lock taken by Knex clears the digest, so those are
   * the candidates).
   */
  readonly knexLocked?: boolean;
  /**
   * Citus mode only: the worker node holding the tenant's distributed schema, `host:port`; null
   * when the schema is not distributed (a plain schema on the coordinator) or missing.
   */
  readonly node?: string | null;
}

/** Where master and every tenant stand (`migrate:status`): per-tenant rows, orphan schemas, a summary. */
export interface StatusReport {
  readonly master: {
    readonly applied: readonly { readonly name: string; readonly batch: number }[];
    readonly pending: readonly string[];
    readonly missing: readonly string[];
  };
  readonly registryExists: boolean;
  /**
   * How tenant positions were learnt: `digest` trusts the registry digest where it names a known
   * position (the tracking table of only the other tenants is read), `verify` read every one.
   */
  readonly source: 'digest' | 'verify';
  /** Tenants whose position came from the registry digest, without opening their schema. */
  readonly trusted: number;
  readonly tenants: readonly TenantStatusRow[];
  /** `tid_…` schemas that no registry row claims. */
  readonly orphans: readonly string[];
  readonly summary: Readonly<Record<TenantState, number>> & { readonly total: number };
}

/** The set of migrations applied in a schema, as drift groups tenants by it. */
export interface AppliedVersion {
  /** `digestOf` the applied names (what the registry keeps). */
  readonly digest: string;
  readonly applied: number;
  /** The newest applied name (by name, as Knex orders), or null when none is applied. */
  readonly latest: string | null;
}

/** How `collectStatus` reads tenants: trusting registry digests, or every tracking table (`verify`). */
export interface StatusOptions {
  /** Read every tenant's tracking table instead of trusting registry digests. */
  readonly verify?: boolean;
  /** Tracking-table chunks read at once. */
  readonly parallel?: number;
  /** Called with the applied version of each ACTIVE tenant whose schema exists (for drift). */
  readonly onVersion?: (schema: string, version: AppliedVersion) => void;
}

/** Registry rows are read this many at a time (keyset pages), so that no page holds the fleet. */
const PAGE = 10_000;
const NONE: readonly string[] = Object.freeze([]);

/** A registry row with what status needs, and whether its schema exists. */
interface RegistryRow {
  readonly id: number;
  readonly orgId: string;
  readonly schema: string;
  readonly status: string;
  readonly error: string | null;
  readonly lastMigrationError: string | null;
  readonly migrationsDigest: string | null;
  readonly exists: boolean;
}

/**
 * Master history, then every tenant's position, in a few round trips whatever the tenant count.
 * A tenant is `failed` when provisioning failed or its last migration run failed.
 *
 * By default a tenant whose registry digest equals the digest of a prefix of the folder (all of
 * it: up to date; fewer: behind by the rest) and that has no recorded error is placed without
 * opening its schema, as `migrate:tenants` trusts it: the toolkit writes the digest in the
 * statement that writes the tracking rows. `verify` reads every tracking table instead.
 */
export async function collectStatus(
  knex: Knex,
  master: readonly MigrationFile[],
  tenant: readonly MigrationFile[],
  options: StatusOptions = {},
): Promise<StatusReport> {
  const masterApplied = await readMaster(knex);
  const masterPlan = planUp(master, masterApplied);
  const summary = { 'up-to-date': 0, behind: 0, failed: 0, 'schema-missing': 0, 'not-active': 0, total: 0 };
  const masterPart = {
    applied: masterApplied,
    pending: masterPlan.steps.map((m) => m.name),
    missing: masterPlan.missing,
  };
  const capabilities = await probeCapabilities(knex);
  const source = options.verify || !capabilities.digest ? 'verify' : 'digest';
  const empty = { master: masterPart, source, trusted: 0, tenants: [], orphans: [], summary } as const;
  if (!capabilities.registry) return { ...empty, registryExists: false };

  const known = source === 'digest' ? knownPositions(tenant) : new Map<string, number>();
  // One pending list and one version per position, shared by every tenant placed there.
  const pendingAt = tenant.map((_, n) => tenant.slice(n).map((m) => m.name));
  pendingAt.push([...NONE]);
  const versionAt = pendingAt.map((_, n) => versionOf(tenant.slice(0, n)));
  const rows: TenantStatusRow[] = [];
  let trusted = 0;
  const add = (row: TenantStatusRow): void => {
    summary[row.state]++;
    summary.total++;
    rows.push(row);
  };
  for await (const page of registryPages(knex, capabilities.digest)) {
    // Registry order within the page: the rows that need their tracking table read are read
    // together, then the page is emitted in order.
    const scanned = new Map<string, readonly AppliedMigration[] | null>();
    const toScan = page.filter((t) => isOpen(t) && trustedPosition(t, known) === undefined).map((t) => t.schema);
    for await (const states of scanSchemas(knex, toScan, TENANT_TRACKING_TABLE, options.parallel ?? 1)) {
      for (const [schema, scan] of states) scanned.set(schema, scan.exists ? scan.applied : null);
    }
    const locked = new Set(
      await stuckKnexLocks(
        knex,
        toScan.filter((schema) => scanned.get(schema)),
        TENANT_TRACKING_TABLE,
      ),
    );
    for (const t of page) {
      const position = isOpen(t) ? trustedPosition(t, known) : undefined;
      if (position !== undefined) {
        trusted++;
        add(placed(t, position, tenant.length, pendingAt[position]!));
        options.onVersion?.(t.schema, versionAt[position]!);
        continue;
      }
      const applied = scanned.has(t.schema) ? scanned.get(t.schema)! : undefined;
      const row = scannedRow(t, tenant, applied);
      add(locked.has(t.schema) ? withKnexLock(row) : row);
      if (applied && t.status === 'ACTIVE') options.onVersion?.(t.schema, versionOf(applied));
    }
  }
  return { ...empty, registryExists: true, trusted, tenants: rows, orphans: await findOrphans(knex) };
}

/** Digest of each prefix of the folder (name order) → its length: the positions a digest can name. */
export function knownPositions(tenant: readonly MigrationFile[]): Map<string, number> {
  const positions = new Map<string, number>();
  const names = tenant.map((m) => m.name);
  for (let n = 0; n < names.length; n++) positions.set(digestOf(names.slice(0, n)), n);
  // The whole folder: the digest migrate:tenants trusts.
  positions.set(folderDigest(tenant), names.length);
  return positions;
}

/** An ACTIVE tenant whose schema exists: the ones whose position is asked of the digest or the tracking table. */
function isOpen(t: RegistryRow): boolean {
  return t.status === 'ACTIVE' && isTenantSchemaName(t.schema) && t.exists;
}

/** How many of the folder's migrations the registry digest says are applied, when it can be trusted. */
function trustedPosition(t: RegistryRow, known: ReadonlyMap<string, number>): number | undefined {
  if (t.lastMigrationError !== null || t.migrationsDigest === null) return undefined;
  return known.get(t.migrationsDigest);
}

/** A tenant whose Knex lock row is set: said in its error, with what to do. */
function withKnexLock(row: TenantStatusRow): TenantStatusRow {
  const hint = `Knex lock set (is_locked = 1): if no knex migrate:* is running, pnpm migrate:unlock --tenant ${row.orgId}`;
  return { ...row, knexLocked: true, error: row.error ? `${row.error}; ${hint}` : hint };
}

/** A tenant placed by its digest: the first `position` migrations of the folder are applied. */
function placed(t: RegistryRow, position: number, total: number, pending: readonly string[]): TenantStatusRow {
  return {
    orgId: t.orgId,
    schema: t.schema,
    status: t.status,
    state: position === total ? 'up-to-date' : 'behind',
    applied: position,
    pending: position === total ? NONE : pending,
    missing: NONE,
    error: null,
  };
}

/** A tenant not placed by its digest: `applied` is what its tracking table holds (null: no schema). */
function scannedRow(
  t: RegistryRow,
  tenant: readonly MigrationFile[],
  applied: readonly AppliedMigration[] | null | undefined,
): TenantStatusRow {
  const plan = applied ? planUp(tenant, applied) : undefined;
  const state: TenantState =
    t.status === 'FAILED'
      ? 'failed'
      : t.status !== 'ACTIVE'
        ? 'not-active'
        : !isTenantSchemaName(t.schema)
          ? 'failed'
          : !t.exists || applied === null
            ? 'schema-missing'
            : t.lastMigrationError !== null || (plan?.missing.length ?? 0) > 0
              ? 'failed'
              : (plan?.steps.length ?? 0) > 0
                ? 'behind'
                : 'up-to-date';
  return {
    orgId: t.orgId,
    schema: t.schema,
    status: t.status,
    state,
    applied: applied?.length ?? 0,
    pending: plan && plan.steps.length > 0 ? plan.steps.map((m) => m.name) : NONE,
    missing: plan && plan.missing.length > 0 ? plan.missing : NONE,
    error:
      t.status === 'FAILED'
        ? t.error
        : !isTenantSchemaName(t.schema)
          ? `registry schema name ${JSON.stringify(t.schema)} is not a tenant schema (tid_ + hex)`
          : t.lastMigrationError,
  };
}

function versionOf(applied: readonly { readonly name: string }[]): AppliedVersion {
  const names = applied.map((m) => m.name);
  const latest = names.reduce<string | null>((max, name) => (max === null || name > max ? name : max), null);
  return { digest: digestOf(names), applied: names.length, latest };
}

/**
 * The registry in id order, a page at a time, each row with whether its schema exists (one
 * join with the catalog, so that a dropped schema shows even where the digest is trusted).
 */
async function* registryPages(knex: Knex, withDigest: boolean): AsyncGenerator<RegistryRow[]> {
  const digest = withDigest ? 't.migrations_digest' : 'null::text';
  let after = 0;
  for (;;) {
    const result = await knex.raw(
      `select t.id, t.clerk_org_id as "orgId", t.schema_name as schema, t.status, t.error,
              t.last_migration_error as "lastMigrationError", ${digest} as "migrationsDigest",
              exists (select 1 from pg_namespace n where n.nspname = t.schema_name) as exists
         from public.tenants t where t.id > ? order by t.id limit ?`,
      [after, PAGE],
    );
    const page = (result.rows as Record<string, unknown>[]).map(
      (r): RegistryRow => ({
        id: Number(r.id),
        orgId: String(r.orgId),
        schema: String(r.schema),
        status: String(r.status),
        error: (r.error as string | null) ?? null,
        lastMigrationError: (r.lastMigrationError as string | null) ?? null,
        migrationsDigest: (r.migrationsDigest as string | null) ?? null,
        exists: Boolean(r.exists),
      }),
    );
    if (page.length === 0) return;
    yield page;
    if (page.length < PAGE) return;
    after = page.at(-1)!.id;
  }
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
