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

/** The shared migrations' history table in each server's `public` (Knex's format). */
export const SHARED_TRACKING_TABLE = 'knex_migrations_shared';

/** Shared migrations (`shared-migrations/`): `public` of every tenant server, main included. */
export const SHARED_TARGET: SchemaTarget = {
  schema: 'public',
  trackingTable: SHARED_TRACKING_TABLE,
  searchPath: 'public',
  knexLockTable: true,
};

/**
 * A tenant's schema first, `public` after it (for extension types such as `vector`); `server` is
 * the tenant server holding it, when that is not the main server (null or absent: main).
 */
export function tenantTarget(schema: string, server?: string | null): SchemaTarget {
  return {
    schema,
    trackingTable: TENANT_TRACKING_TABLE,
    searchPath: tenantSearchPath(schema),
    tenant: true,
    ...(server ? { server } : {}),
  };
}
