import type { Knex } from 'knex';
import { RegistryMissingError, UsageError } from '../errors.ts';

/**
 * The lifecycle (docs/lifecycle.md): PROVISIONING → ACTIVE ↔ ARCHIVED → DELETED, FAILED → retry.
 * ARCHIVED and DELETED need master migration `20261202000011_tenant_lifecycle_statuses`; MOVING
 * (`tenant:move`, docs/servers.md) needs `20261203000001_tenant_servers`.
 */
export const TENANT_STATUSES = ['PROVISIONING', 'ACTIVE', 'FAILED', 'ARCHIVED', 'DELETED', 'MOVING'] as const;
/** A registry status: `PROVISIONING` → `ACTIVE` ↔ `ARCHIVED` → `DELETED`, and `FAILED` (retried by `tenants:retry`). */
export type TenantStatus = (typeof TENANT_STATUSES)[number];

/** One row of `public.tenants`. `status` is a string because rows can be edited by hand. */
export interface Tenant {
  readonly id: number;
  readonly orgId: string;
  readonly schema: string;
  readonly status: string;
  /** Why provisioning failed (status FAILED). */
  readonly error: string | null;
  /** Why the last `migrate:tenants` failed on this tenant; cleared by the next success. */
  readonly lastMigrationError: string | null;
  /** Digest of the names applied in its schema (see `digestOf`), when the registry keeps one. */
  readonly migrationsDigest?: string | null;
  /** Labels (e.g. `canary`, `internal`, a plan tier), when the registry keeps them. */
  readonly labels?: readonly string[];
  /** The tenant server holding its schema (`TENANT_SERVERS`); null for the registry's own server. */
  readonly server?: string | null;
}

const COLUMNS = {
  id: 'id',
  orgId: 'clerk_org_id',
  schema: 'schema_name',
  status: 'status',
  error: 'error',
  lastMigrationError: 'last_migration_error',
} as const;

function table(knex: Knex | Knex.Transaction): Knex.QueryBuilder {
  return knex.withSchema('public').from('tenants');
}

function select(knex: Knex | Knex.Transaction): Knex.QueryBuilder {
  return table(knex).select(COLUMNS);
}

export function toTenant(row: Record<string, unknown>): Tenant {
  return {
    id: Number(row.id),
    orgId: String(row.orgId),
    schema: String(row.schema),
    status: String(row.status),
    error: (row.error as string | null) ?? null,
    lastMigrationError: (row.lastMigrationError as string | null) ?? null,
    ...(row.migrationsDigest === undefined
      ? {}
      : { migrationsDigest: (row.migrationsDigest as string | null) ?? null }),
    ...(row.labels === undefined ? {} : { labels: (row.labels as string[] | null) ?? [] }),
    ...(row.server === undefined ? {} : { server: (row.server as string | null) ?? null }),
  };
}

/** Throws RegistryMissingError (naming `pnpm migrate:master`) when `public.tenants` does not exist. */
export async function assertRegistry(knex: Knex | Knex.Transaction): Promise<void> {
  const result = await knex.raw("select to_regclass('public.tenants') is not null as present");
  if (!result.rows[0]?.present) throw new RegistryMissingError();
}

/** The registry row of one organisation, or undefined when it is not registered. */
export async function findTenantByOrgId(
  knex: Knex | Knex.Transaction,
  orgId: string,
  options: { readonly withServer?: boolean } = {},
): Promise<Tenant | undefined> {
  const query = select(knex).where(COLUMNS.orgId, orgId).first();
  if (options.withServer) query.select({ server: 'server' });
  const row = await query;
  return row ? toTenant(row) : undefined;
}

/** TENANT_SERVERS is set but `public.tenants` has no `server` column yet (one message for every command). */
export function serversColumnMissing(): UsageError {
  return new UsageError(
    'TENANT_SERVERS is set but this registry does not record servers yet: run `pnpm migrate:master` first (master migration 20261203000001_tenant_servers)',
    { code: 'E_NO_SERVERS_COLUMN' },
  );
}

/** Tenants per server (null: the registry's own), not counting DELETED ones: for the placement rule. */
export async function tenantsPerServer(knex: Knex | Knex.Transaction): Promise<Map<string | null, number>> {
  const result = await knex.raw(
    "select server, count(*)::int as n from public.tenants where status <> 'DELETED' group by server",
  );
  return new Map((result.rows as { server: string | null; n: number }[]).map((r) => [r.server, r.n]));
}

export async function findTenantBySchema(knex: Knex | Knex.Transaction, schema: string): Promise<Tenant | undefined> {
  const row = await select(knex).where(COLUMNS.schema, schema).first();
  return row ? toTenant(row) : undefined;
}

/** Whether `public.tenants` has the `migrations_digest` column (a registry made by our first master migration). */
export async function registryKeepsDigest(knex: Knex | Knex.Transaction): Promise<boolean> {
  const result = await knex.raw(
    "select exists (select 1 from pg_attribute where attrelid = 'public.tenants'::regclass and attname = 'migrations_digest' and not attisdropped) as present",
  );
  return Boolean(result.rows[0]?.present);
}

/** All tenants (or those of `orgIds`), in registry order; with their digests when asked. */
export async function listTenants(
  knex: Knex | Knex.Transaction,
  options: {
    orgIds?: readonly string[];
    withDigest?: boolean;
    withLabels?: boolean;
    /** With each tenant's server (needs master migration `20261203000001_tenant_servers`). */
    withServers?: boolean;
    /** Only tenants carrying at least one of these labels. */
    labels?: readonly string[];
  } = {},
): Promise<Tenant[]> {
  const query = select(knex).orderBy(COLUMNS.id);
  if (options.withDigest) query.select({ migrationsDigest: 'migrations_digest' });
  if (options.withLabels) query.select({ labels: 'labels' });
  if (options.withServers) query.select({ server: 'server' });
  if (options.orgIds) query.whereIn(COLUMNS.orgId, [...options.orgIds]);
  if (options.labels) query.whereRaw('labels && ?::text[]', [[...options.labels]]);
  return (await query).map(toTenant);
}

/**
 * Registers an org as PROVISIONING under `schema` unless the org or the schema name is
 * already taken; returns the row now registered to the org, or undefined when the schema
 * name belongs to another org (the caller then tries a longer name).
 */
export async function registerTenant(
  knex: Knex | Knex.Transaction,
  orgId: string,
  schema: string,
  server?: string | null,
): Promise<Tenant | undefined> {
  await table(knex)
    .insert({
      [COLUMNS.orgId]: orgId,
      [COLUMNS.schema]: schema,
      [COLUMNS.status]: 'PROVISIONING',
      ...(server ? { server } : {}),
    })
    .onConflict()
    .ignore();
  return findTenantByOrgId(knex, orgId);
}

export async function setTenantStatus(
  knex: Knex | Knex.Transaction,
  orgId: string,
  status: TenantStatus,
  error: string | null = null,
): Promise<void> {
  await table(knex)
    .where(COLUMNS.orgId, orgId)
    .update({ [COLUMNS.status]: status, [COLUMNS.error]: error, updated_at: knex.fn.now() });
}

/**
 * Marks a tenant FAILED with the reason, only while it is being provisioned (PROVISIONING or
 * FAILED): an error met after the schema transaction committed (a lost COMMIT reply,
 * bookkeeping) must not fail a complete tenant, nor one archived meanwhile.
 */
export async function markTenantFailed(knex: Knex | Knex.Transaction, orgId: string, reason: string): Promise<void> {
  await table(knex)
    .where(COLUMNS.orgId, orgId)
    .whereIn(COLUMNS.status, ['PROVISIONING', 'FAILED'])
    .update({ [COLUMNS.status]: 'FAILED', [COLUMNS.error]: reason, updated_at: knex.fn.now() });
}

/** Records (or clears, with null) the last migration error of a tenant, shown by status. */
export async function setMigrationError(
  knex: Knex | Knex.Transaction,
  schema: string,
  error: string | null,
): Promise<void> {
  await table(knex)
    .where(COLUMNS.schema, schema)
    .update({ [COLUMNS.lastMigrationError]: error, updated_at: knex.fn.now() });
}

/**
 * The one-round-trip path of provisioning: registers `orgId` under `schema` as PROVISIONING if
 * neither is taken and no schema of that name exists, and returns the org's row (new or
 * existing). Undefined means the slow path must decide (name collision, or an orphan schema).
 */
export async function claimTenant(
  knex: Knex | Knex.Transaction,
  orgId: string,
  schema: string,
  server?: string | null,
): Promise<Tenant | undefined> {
  // With a server (registries with the servers column only), the row says where the schema lives;
  // the orphan check looks at the registry's own server only (another server's catalog is elsewhere).
  const withServer = server !== undefined;
  const columns = `id, clerk_org_id as "orgId", schema_name as "schema", status, error, last_migration_error as "lastMigrationError"${
    withServer ? ', server' : ''
  }`;
  const result = await knex.raw(
    `with inserted as (
       insert into public.tenants (clerk_org_id, schema_name, status${withServer ? ', server' : ''})
       select ?, ?, 'PROVISIONING'${withServer ? ', ?' : ''} where not exists (select 1 from pg_namespace where nspname = ?)
       on conflict do nothing
       returning ${columns})
     select * from inserted
     union all
     select ${columns} from public.tenants where clerk_org_id = ?
     limit 1`,
    withServer ? [orgId, schema, server, schema, orgId] : [orgId, schema, schema, orgId],
  );
  const row = result.rows[0] as Record<string, unknown> | undefined;
  return row ? toTenant(row) : undefined;
}

/** A label: 1 to 64 letters, digits, `_`, `-`, `.` or `:` (shown in commands, so kept plain). */
export function validateLabel(label: string): string {
  if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(label)) {
    throw new UsageError(`A label is 1 to 64 letters, digits, _ - . or :, got ${JSON.stringify(label.slice(0, 80))}`);
  }
  return label;
}

/**
 * Adds (or with `remove`, removes) labels on one tenant, in one statement; returns its labels
 * after the change, or undefined when the org is not registered.
 */
export async function changeLabels(
  knex: Knex | Knex.Transaction,
  orgId: string,
  labels: readonly string[],
  remove = false,
): Promise<string[] | undefined> {
  const change = remove
    ? 'array(select l from unnest(labels) l where not (l = any(?::text[])) order by l)'
    : 'array(select distinct l from unnest(labels || ?::text[]) l order by l)';
  const result = await knex.raw(
    `update public.tenants set labels = ${change}, updated_at = now() where clerk_org_id = ? returning labels`,
    [[...labels], orgId],
  );
  const row = result.rows[0] as { labels: string[] } | undefined;
  return row?.labels;
}
