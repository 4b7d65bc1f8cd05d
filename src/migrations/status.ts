import type { Knex } from 'knex';
import { messageOf } from '../errors.ts';
import { isTenantSchemaName, SCHEMA_PREFIX } from '../tenants/naming.ts';
import { probeCapabilities } from './books.ts';
import { groupBy, MAIN, probe, type TenantServerPools } from './fanout.ts';
import { type AppliedMigration, digestOf, folderDigest, planUp } from './plan.ts';
import { scanSchemas } from './prescan.ts';
import type { MigrationFile } from './source.ts';
import { MASTER_TARGET, TENANT_TRACKING_TABLE } from './targets.ts';
import { stuckKnexLocks } from './tracking.ts';

/** Where one tenant stands; `unreachable`: its server did not answer (tenants on several servers). */
export type TenantState = 'up-to-date' | 'behind' | 'failed' | 'schema-missing' | 'not-active' | 'unreachable';

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
  /**
   * The server holding the schema (`main` or a TENANT_SERVERS name): present when servers are
   * configured, or when the registry names a server this configuration does not know.
   */
  readonly server?: string;
}

/** A tenant server that did not answer (`StatusReport['unreachable']`'s items). */
export type UnreachableServer = NonNullable<StatusReport['unreachable']>[number];

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
  /** `unreachable` is counted only when a server did not answer. */
  readonly summary: Readonly<Record<Exclude<TenantState, 'unreachable'>, number>> & {
    readonly unreachable?: number;
    readonly total: number;
  };
  /**
   * The tenant servers that did not answer (absent when every one did); `message` is one line:
   * `server eu2 (host:port/db) is unreachable: …`. Their tenants that needed them are `unreachable`.
   */
  readonly unreachable?: readonly { readonly server: string; readonly message: string }[];
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
  /** Tenants on several servers (TENANT_SERVERS): each tracking table is read on its tenant's server. */
  readonly pools?: TenantServerPools;
  /** Only tenants on these servers (`main` is the registry's own). */
  readonly servers?: readonly string[];
}

/** The summary as it is counted (`unreachable` only once a tenant is). */
type Counts = Record<Exclude<TenantState, 'unreachable'>, number> & { unreachable?: number; total: number };

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
  /** Whether its schema exists on the main server (the registry's). */
  readonly exists: boolean;
  /** The server holding its schema (null: the main one). */
  readonly server: string | null;
}

/**
 * Master history, then every tenant's position, in a few round trips whatever the tenant count.
 * A tenant is `failed` when provisioning failed or its last migration run failed.
 *
 * By default a tenant whose registry digest equals the digest of a prefix of the folder (all of
 * it: up to date; fewer: behind by the rest) and that has no recorded error is placed without
 * opening its schema, as `migrate:tenants` trusts it: the toolkit writes the digest in the
 * statement that writes the tracking rows. `verify` reads every tracking table instead.
 *
 * A tenant on another server than the registry's is always read there (no trigger on that
 * server clears its digest when plain Knex changes its tracking table), a few round trips per
 * server and page. A server that does not answer makes its tenants `unreachable` (one line in
 * `unreachable`); the others are reported as usual.
 */
export async function collectStatus(
  knex: Knex,
  master: readonly MigrationFile[],
  tenant: readonly MigrationFile[],
  options: StatusOptions = {},
): Promise<StatusReport> {
  const masterApplied = await readMaster(knex);
  const masterPlan = planUp(master, masterApplied);
  const summary: Counts = { 'up-to-date': 0, behind: 0, failed: 0, 'schema-missing': 0, 'not-active': 0, total: 0 };
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
    if (row.state === 'unreachable') summary.unreachable = (summary.unreachable ?? 0) + 1;
    else summary[row.state]++;
    summary.total++;
    rows.push(row);
  };
  const down = new Map<string, string>();
  const reader = { knex, parallel: options.parallel ?? 1, pools: options.pools, down };
  for await (const page of registryPages(knex, capabilities.digest, capabilities.servers, options.servers)) {
    // Registry order within the page: the rows that need their tracking table read are read
    // together, each server's on that server, then the page is emitted in order.
    const toScan = page.filter((t) => needsScan(t, known));
    const reads = await Promise.all(
      [...groupBy(toScan, serverOfRow)].map(([server, group]) =>
        readServer(
          reader,
          server,
          group.map((t) => t.schema),
        ),
      ),
    );
    const scanned = new Map(reads.flatMap((read) => [...read.scanned]));
    const locked = new Set(reads.flatMap((read) => read.locked));
    for (const t of page) {
      const server = serverOfRow(t);
      const shown = (row: TenantStatusRow): TenantStatusRow =>
        options.pools || server !== MAIN ? { ...row, server } : row;
      const position = server === MAIN && isOpen(t) ? trustedPosition(t, known) : undefined;
      if (position !== undefined) {
        trusted++;
        add(shown(placed(t, position, tenant.length, pendingAt[position]!)));
        options.onVersion?.(t.schema, versionAt[position]!);
        continue;
      }
      if (down.has(server) && needsScan(t, known)) {
        add(shown(unreachableRow(t)));
        continue;
      }
      const applied = scanned.has(t.schema) ? scanned.get(t.schema)! : undefined;
      // On another server, whether the schema exists is what the scan found there.
      const here = server === MAIN ? t : { ...t, exists: applied !== undefined && applied !== null };
      const row = scannedRow(here, tenant, applied);
      add(shown(locked.has(t.schema) ? withKnexLock(row) : row));
      if (applied && t.status === 'ACTIVE') options.onVersion?.(t.schema, versionOf(applied));
    }
  }
  const unreachable = [...down].map(([server, message]) => ({ server, message }));
  const wantsMain = options.servers === undefined || options.servers.includes(MAIN);
  return {
    ...empty,
    registryExists: true,
    trusted,
    tenants: rows,
    orphans: wantsMain ? await findOrphans(knex) : [],
    ...(unreachable.length > 0 ? { unreachable } : {}),
  };
}

/** The server of a registry row (`main` for none). */
function serverOfRow(t: RegistryRow): string {
  return t.server ?? MAIN;
}

/**
 * Whether a tenant's tracking table is read: an ACTIVE tenant with a derived schema name whose
 * position the digest does not give (on the main server, where its schema exists: elsewhere,
 * always).
 */
function needsScan(t: RegistryRow, known: ReadonlyMap<string, number>): boolean {
  if (serverOfRow(t) !== MAIN) return t.status === 'ACTIVE' && isTenantSchemaName(t.schema);
  return isOpen(t) && trustedPosition(t, known) === undefined;
}

/** What reading one server's tracking tables needs; `down` collects the servers that did not answer. */
interface ServerReader {
  readonly knex: Knex;
  readonly parallel: number;
  readonly pools: TenantServerPools | undefined;
  readonly down: Map<string, string>;
}

/**
 * The tracking tables of `schemas`, all on `server`: their applied rows (null: no schema) and
 * those whose Knex lock row is set. On another server than main, a failure (the server down, or
 * not configured) is recorded in `down` instead of thrown, and that server is not asked again.
 */
async function readServer(
  reader: ServerReader,
  server: string,
  schemas: readonly string[],
): Promise<{ scanned: Map<string, readonly AppliedMigration[] | null>; locked: string[] }> {
  const scanned = new Map<string, readonly AppliedMigration[] | null>();
  if (schemas.length === 0 || reader.down.has(server)) return { scanned, locked: [] };
  const read = async (knex: Knex, parallel: number) => {
    for await (const states of scanSchemas(knex, schemas, TENANT_TRACKING_TABLE, parallel)) {
      for (const [schema, scan] of states) scanned.set(schema, scan.exists ? scan.applied : null);
    }
    const present = schemas.filter((schema) => scanned.get(schema));
    return { scanned, locked: await stuckKnexLocks(knex, present, TENANT_TRACKING_TABLE) };
  };
  if (server === MAIN) return read(reader.knex, reader.parallel);
  try {
    if (!reader.pools) throw new Error(`server ${server} is not configured (TENANT_SERVERS)`);
    return await read(reader.pools.knexFor(server), Math.min(reader.parallel, reader.pools.poolMax(server)));
  } catch (error) {
    reader.down.set(server, (await probe(reader.pools, server)) ?? messageOf(error).split('\n')[0]!);
    return { scanned: new Map(), locked: [] };
  }
}

/**
 * A tenant whose server did not answer: its position is not known (why is said once per server,
 * in the report's `unreachable`); its error is the registry's.
 */
function unreachableRow(t: RegistryRow): TenantStatusRow {
  return {
    orgId: t.orgId,
    schema: t.schema,
    status: t.status,
    state: 'unreachable',
    applied: 0,
    pending: NONE,
    missing: NONE,
    error: t.lastMigrationError,
  };
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
 * join with the catalog, so that a dropped schema shows even where the digest is trusted) and,
 * when the registry records servers, its server (only those of `servers`, when given).
 */
async function* registryPages(
  knex: Knex,
  withDigest: boolean,
  withServers: boolean,
  servers: readonly string[] | undefined,
): AsyncGenerator<RegistryRow[]> {
  const digest = withDigest ? 't.migrations_digest' : 'null::text';
  const server = withServers ? 't.server' : 'null::text';
  // Without the column every tenant is on main.
  if (servers !== undefined && !withServers && !servers.includes(MAIN)) return;
  const only = servers !== undefined && withServers ? `and coalesce(t.server, '${MAIN}') = any(?::text[])` : '';
  let after = 0;
  for (;;) {
    const result = await knex.raw(
      `select t.id, t.clerk_org_id as "orgId", t.schema_name as schema, t.status, t.error,
              t.last_migration_error as "lastMigrationError", ${digest} as "migrationsDigest",
              exists (select 1 from pg_namespace n where n.nspname = t.schema_name) as exists, ${server} as server
         from public.tenants t where t.id > ? ${only} order by t.id limit ?`,
      only ? [after, [...servers!], PAGE] : [after, PAGE],
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
        server: (r.server as string | null) ?? null,
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
