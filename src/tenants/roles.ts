import type { Knex } from 'knex';
import { lockForTransaction } from '../db/locks.ts';
import { ToolkitError } from '../errors.ts';
import { isTenantSchemaName } from './naming.ts';

/** Suffix of the per-tenant role created with `TENANT_ROLES=on`. */
export const TENANT_ROLE_SUFFIX = '_app';

/**
 * The role that owns a tenant's data privileges when `TENANT_ROLES=on`: `<schema>_app`
 * (`tid_cf4116b064` → `tid_cf4116b064_app`). Derived from a derived schema name only, so it is
 * safe to quote as an identifier; anything else is refused.
 */
export function tenantRoleName(schema: string): string {
  if (!isTenantSchemaName(schema)) throw new Error(`not a tenant schema name: ${JSON.stringify(schema)}`);
  return `${schema}${TENANT_ROLE_SUFFIX}`;
}

/** The application role named by `TENANT_APP_ROLE` does not exist on the server. */
export class AppRoleMissingError extends ToolkitError {
  readonly role: string;
  constructor(role: string) {
    super(
      'E_APP_ROLE_MISSING',
      `The application role ${JSON.stringify(role)} does not exist: create it (see docs/isolation.md) or set TENANT_APP_ROLE to the role your application logs in as`,
    );
    this.role = role;
  }
}

/** What `ensureTenantRole` did: made the role now, or found it and refreshed its grants. */
export type TenantRoleOutcome = 'created' | 'refreshed';

/**
 * Makes sure the tenant's role exists and holds exactly what it needs, idempotently, in the
 * caller's transaction (the provisioner's, under the schema's lock): the role `<schema>_app`
 * (NOLOGIN); USAGE on its schema; DML on the schema's tables and USAGE/SELECT on its sequences,
 * now and, through default privileges of the current (migration) role in that schema, on what
 * later migrations create there; and membership of `appRole` in it, so that the runtime may
 * `SET LOCAL ROLE` to it. Two round trips. Needs CREATEROLE (PostgreSQL 16+: the creator gets
 * ADMIN OPTION on the roles it creates). On 16+ the membership is granted WITH INHERIT FALSE:
 * the application role reaches a tenant's data only by switching to its role.
 */
export async function ensureTenantRole(
  conn: Knex | Knex.Transaction,
  schema: string,
  appRole: string,
): Promise<TenantRoleOutcome> {
  const role = tenantRoleName(schema);
  const probe = await conn.raw(
    `select exists (select 1 from pg_catalog.pg_roles where rolname = ?) as app_exists,
            r.oid is not null as role_exists,
            exists (select 1 from pg_catalog.pg_auth_members m join pg_catalog.pg_roles a on a.oid = m.member
                     where m.roleid = r.oid and a.rolname = ?) as granted,
            current_setting('server_version_num')::int as version
       from (select ?::text as name) n left join pg_catalog.pg_roles r on r.rolname = n.name`,
    [appRole, appRole, role],
  );
  const row = probe.rows[0] as { app_exists: boolean; role_exists: boolean; granted: boolean; version: number };
  if (!row.app_exists) throw new AppRoleMissingError(appRole);
  // Identifier bindings only: Knex inlines them quoted, so the statements go as one simple query.
  const statements: string[] = [];
  const bindings: string[] = [];
  const add = (sql: string, ...ids: string[]): void => {
    statements.push(sql);
    bindings.push(...ids);
  };
  if (!row.role_exists) add('create role ?? nologin', role);
  add('grant usage on schema ?? to ??', schema, role);
  add('grant select, insert, update, delete on all tables in schema ?? to ??', schema, role);
  add('grant usage, select on all sequences in schema ?? to ??', schema, role);
  add('alter default privileges in schema ?? grant select, insert, update, delete on tables to ??', schema, role);
  add('alter default privileges in schema ?? grant usage, select on sequences to ??', schema, role);
  if (!row.granted) add(`grant ?? to ??${row.version >= 160000 ? ' with inherit false' : ''}`, role, appRole);
  await conn.raw(statements.join(';\n'), bindings);
  return row.role_exists ? 'refreshed' : 'created';
}

/**
 * Drops a tenant's role if it exists (`tenant:drop`). Run it in the transaction that drops the
 * schema, after the drop: the role's privileges went with the schema's objects and its
 * memberships go with the role. Only if something in this database still depends on it (a grant
 * made by hand elsewhere) does it run `DROP OWNED BY` first, which PostgreSQL 15 allows only to a
 * member of the role (a superuser): the migration role that created it with `CREATEROLE` is not.
 */
export async function dropTenantRole(trx: Knex.Transaction, schema: string): Promise<void> {
  const role = tenantRoleName(schema);
  const found = await trx.raw(
    `select (select count(*) from pg_catalog.pg_shdepend d
              where d.refclassid = 'pg_catalog.pg_authid'::regclass and d.refobjid = r.oid
                and d.dbid = (select oid from pg_catalog.pg_database where datname = current_database())
            )::int as dependents
       from pg_catalog.pg_roles r where r.rolname = ?`,
    [role],
  );
  const row = found.rows[0] as { dependents: number } | undefined;
  if (!row) return;
  if (row.dependents > 0) await trx.raw('drop owned by ??', [role]);
  await trx.raw('drop role ??', [role]);
}

/** One tenant's line in the `tenants:roles` report. */
export interface TenantRoleResult {
  readonly orgId: string;
  readonly schema: string;
  readonly role: string;
  readonly outcome: TenantRoleOutcome | 'failed';
  readonly error: string | null;
}

/** What `tenants:roles` did: one result per tenant. */
export interface TenantRolesReport {
  readonly appRole: string;
  readonly tenants: readonly TenantRoleResult[];
  readonly totals: Readonly<Record<TenantRoleResult['outcome'], number>>;
}

/**
 * `tenants:roles`: ensures the role of every registered tenant whose schema exists (those
 * provisioned before `TENANT_ROLES=on`, or whose grants need repair), one transaction per tenant
 * under its schema lock, so that no migration of that tenant runs meanwhile. Reports each tenant;
 * a failure is reported, not thrown, and the others go on.
 */
export async function ensureTenantRoles(
  knex: Knex,
  appRole: string,
  orgIds?: readonly string[],
): Promise<TenantRolesReport> {
  const only = orgIds && orgIds.length > 0 ? [...orgIds] : null;
  const result = await knex.raw(
    `select t.clerk_org_id as "orgId", t.schema_name as schema
       from public.tenants t join pg_catalog.pg_namespace n on n.nspname = t.schema_name
      where ?::text[] is null or t.clerk_org_id = any(?::text[])
      order by t.schema_name`,
    [only, only],
  );
  const rows = result.rows as { orgId: string; schema: string }[];
  const tenants: TenantRoleResult[] = [];
  for (const { orgId, schema } of rows) {
    // A hand-edited row naming a non-derived schema never gets a role.
    if (!isTenantSchemaName(schema)) continue;
    const role = tenantRoleName(schema);
    try {
      const outcome = await knex.transaction(async (trx) => {
        await lockForTransaction(trx, schema);
        return ensureTenantRole(trx, schema, appRole);
      });
      tenants.push({ orgId, schema, role, outcome, error: null });
    } catch (error) {
      // The application role is missing for every tenant alike: say it once, as the command's error.
      if (error instanceof AppRoleMissingError) throw error;
      tenants.push({ orgId, schema, role, outcome: 'failed', error: (error as Error).message });
    }
  }
  const totals = { created: 0, refreshed: 0, failed: 0 };
  for (const t of tenants) totals[t.outcome]++;
  return { appRole, tenants, totals };
}
