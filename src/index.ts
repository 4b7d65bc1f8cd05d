/**
 * Public API: the same functions the CLI uses. Applications typically call
 * `provisionTenant(orgId)` from their Clerk `organization.created` handler, or open a toolkit
 * over their own Knex with `createToolkit({ knex, config })`.
 */
import { configFromEnvironment } from './config/env.ts';
import type { ToolkitConfig } from './config/config.ts';
import type { ProvisionReport } from './provisioning/provisioner.ts';
import { createToolkit, openToolkit, type Toolkit } from './toolkit.ts';
import type { Knex } from 'knex';

export { loadConfig, parseDuration, DEFAULTS, type ToolkitConfig, type ConnectionTarget, type Env } from './config/config.ts';
export { configFromEnvironment } from './config/env.ts';
export { openDatabase, withDatabase, type Database } from './db/connection.ts';
export { quoteIdent, tenantSearchPath } from './db/identifiers.ts';
export { SQLSTATE } from './db/pg-errors.ts';
export * from './errors.ts';
export { schemaNameFor, validateOrgId, candidateSchemaNames } from './tenants/naming.ts';
export { listTenants, findTenantByOrgId, TENANT_STATUSES, type Tenant, type TenantStatus } from './tenants/registry.ts';
export { folderSource, type Migration, type MigrationSource, type MigrationModule } from './migrations/source.ts';
export { runSchema, SchemaMissingError, MissingFilesError, MigrationFailedError, type SchemaRunReport, type SchemaTarget, type RunSettings, type RunFailure } from './migrations/runner.ts';
export { digestOf } from './migrations/plan.ts';
export { runTenants, type FanoutReport, type TenantReport, type TenantOutcome, type Totals } from './migrations/fanout.ts';
export { collectStatus, type StatusReport, type TenantStatusRow, type TenantState } from './migrations/status.ts';
export { MASTER_TARGET, tenantTarget, TENANT_TRACKING_TABLE, MASTER_TRACKING_TABLE } from './migrations/targets.ts';
export { provision, OrphanSchemaError, type ProvisionReport } from './provisioning/provisioner.ts';
export { ExtensionUnavailableError } from './provisioning/extensions.ts';
export { createToolkit, openToolkit, type Toolkit, type TenantRunOptions, type ToolkitSources } from './toolkit.ts';

/**
 * Provisions one organisation's schema: registers it, creates and migrates the schema, sets it
 * ACTIVE (idempotent; concurrent calls for one org return the same schema). With no toolkit
 * given, it connects with the environment's configuration (DATABASE_URL or DB_*) and closes
 * the connection afterwards; pass `{ knex, config }` to use the application's pool.
 */
export async function provisionTenant(
  orgId: string,
  options: { toolkit?: Toolkit; knex?: Knex; config?: ToolkitConfig } = {},
): Promise<ProvisionReport> {
  if (options.toolkit) return options.toolkit.provisionTenant(orgId);
  const config = options.config ?? configFromEnvironment();
  if (options.knex) return createToolkit({ knex: options.knex, config }).provisionTenant(orgId);
  const toolkit = await openToolkit(config);
  try {
    return await toolkit.provisionTenant(orgId);
  } finally {
    await toolkit.close();
  }
}
export { createTenantClient, type TenantClient, type TenantClientOptions, type TenantClientStats, type TenantScope, type LazyMigrationEvent } from './runtime/client.ts';
export { TenantAccessError, TenantNotFoundError, TenantUnavailableError, type TenantUnavailableReason } from './runtime/errors.ts';
