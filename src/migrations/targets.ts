import { tenantSearchPath } from '../db/identifiers.ts';
import type { SchemaTarget } from './tracking.ts';

/** The master history table in `public` (Knex's format). */
export const MASTER_TRACKING_TABLE = 'knex_migrations_master';
/** The tracking table in each tenant schema (Knex's format). */
export const TENANT_TRACKING_TABLE = 'knex_migrations_tenant';

/** Master migrations: `public`, tracked in `public.knex_migrations_master` with Knex's lock table. */
export const MASTER_TARGET: SchemaTarget = {
  schema: 'public',
  trackingTable: MASTER_TRACKING_TABLE,
  searchPath: 'public',
  knexLockTable: true,
};

/** A tenant's schema first, `public` after it (for extension types such as `vector`). */
export function tenantTarget(schema: string): SchemaTarget {
  return { schema, trackingTable: TENANT_TRACKING_TABLE, searchPath: tenantSearchPath(schema), tenant: true };
}
