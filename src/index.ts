/**
 * Public API: the same functions the CLI uses. Applications typically call
 * `provisionTenant(orgId)` from their Clerk `organization.created` handler, or open a toolkit
 * over their own Knex with `createToolkit({ knex, config })`.
 */

import type { Knex } from 'knex';
import type { ToolkitConfig } from './config/config.ts';
import { configFromEnvironment } from './config/env.ts';
import type { ProvisionReport } from './provisioning/provisioner.ts';
import { createToolkit, openToolkit, type Toolkit } from './toolkit.ts';

export {
  type ConnectionTarget,
  DEFAULTS,
  type Env,
  loadConfig,
  parseDuration,
  type ToolkitConfig,
} from './config/config.ts';
export { configFromEnvironment } from './config/env.ts';
export { type Database, openDatabase, withDatabase } from './db/connection.ts';
export { quoteIdent, tenantSearchPath } from './db/identifiers.ts';
export { SQLSTATE } from './db/pg-errors.ts';
export * from './errors.ts';
export type { LedgerStatus, RunDetail, RunSummary, RunTenantRow } from './ledger/history.ts';
export { type LintFinding, type LintInput, type LintOptions, type LintReport, lintMigrations } from './lint/lint.ts';
export { lintJson, lintText } from './lint/render.ts';
export type {
  FanoutReport,
  TenantOutcome,
  TenantReport,
  Totals,
} from './migrations/fanout.ts';
export { type Escape, SchemaEscapeError } from './migrations/guard.ts';
export { digestOf } from './migrations/plan.ts';
export { type RollbackOptions, RollbackRefusedError } from './migrations/rollback.ts';
export { folderSource, type Migration, type MigrationModule, type MigrationSource } from './migrations/source.ts';
export { collectStatus, type StatusReport, type TenantState, type TenantStatusRow } from './migrations/status.ts';
export { MASTER_TARGET, MASTER_TRACKING_TABLE, TENANT_TRACKING_TABLE, tenantTarget } from './migrations/targets.ts';
export type { SchemaTarget } from './migrations/tracking.ts';
export {
  MigrationFailedError,
  MissingFilesError,
  RollbackBlockedError,
  type RunFailure,
  type RunSettings,
  runSchema,
  SchemaMissingError,
  SchemaNameError,
  type SchemaRunReport,
} from './migrations/unit.ts';
export { type Amount, parseAmount, parseWaves } from './migrations/waves.ts';
export { ExtensionUnavailableError } from './provisioning/extensions.ts';
export { OrphanSchemaError, type ProvisionReport, provision } from './provisioning/provisioner.ts';
export { collectFleetReport, type FleetReport } from './report/fleet.ts';
export { renderFleetHtml } from './report/html.ts';
export { type AdoptReport, adoptTenants, type OrgIdSource, parseOrgMap, readOrgMap } from './tenants/adopt.ts';
export { candidateSchemaNames, schemaNameFor, validateOrgId } from './tenants/naming.ts';
export { findTenantByOrgId, listTenants, TENANT_STATUSES, type Tenant, type TenantStatus } from './tenants/registry.ts';
export {
  createToolkit,
  type MigrateTenantsOptions,
  openToolkit,
  type TenantRunOptions,
  type Toolkit,
  type ToolkitSources,
} from './toolkit.ts';

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
export {
  createTenantClient,
  type LazyMigrationEvent,
  type TenantClient,
  type TenantClientOptions,
  type TenantClientStats,
  type TenantScope,
} from './runtime/client.ts';
export {
  TenantAccessError,
  TenantNotFoundError,
  TenantUnavailableError,
  type TenantUnavailableReason,
} from './runtime/errors.ts';
