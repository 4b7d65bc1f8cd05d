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
