import type { Knex } from 'knex';
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

/**
 * Drops a tenant's role if it exists (`tenant:drop`): first what it owns or was granted in this
 * database (`DROP OWNED BY`), then the role. Run it in the transaction that drops the schema.
 */
export async function dropTenantRole(trx: Knex.Transaction, schema: string): Promise<void> {
  const role = tenantRoleName(schema);
  const found = await trx.raw('select 1 from pg_catalog.pg_roles where rolname = ?', [role]);
  if (found.rows.length === 0) return;
  await trx.raw('drop owned by ??', [role]);
  await trx.raw('drop role ??', [role]);
}
