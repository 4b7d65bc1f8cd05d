/**
 * Public API: the same functions the CLI uses. Applications typically call
 * `provisionTenant(orgId)` from their Clerk `organization.created` handler, or open a toolkit
 * over their own Knex with `createToolkit({ knex, config })`.
 */

import type { Knex } from 'knex';
import type { ToolkitConfig } from './config/config.ts';
import { configFromProject } from './config/project.ts';
import type { ProvisionReport } from './provisioning/provisioner.ts';
import { createToolkit, openToolkit, type Toolkit } from './toolkit.ts';

export {
  type ConnectionTarget,
  DEFAULTS,
  type Env,
  loadConfig,
  MAIN_SERVER,
  parseDuration,
  type TenantServerConfig,
  type ToolkitConfig,
} from './config/config.ts';
export { CONFIG_KEYS, defineConfig, type ProjectConfig } from './config/define.ts';
export { configFromEnvironment } from './config/env.ts';
export { CONFIG_FILES, configFromProject } from './config/project.ts';
export { type Database, type OpenOptions, openDatabase, withDatabase } from './db/connection.ts';
export { quoteIdent, tenantSearchPath } from './db/identifiers.ts';
export { SQLSTATE } from './db/pg-errors.ts';
export { placeTenant, Servers, UnknownServerError } from './db/servers.ts';
export * from './errors.ts';
export { listTenantsReport, type TenantListOptions, type TenantListReport, type TenantListRow } from './fleet/list.ts';
export {
  DEFAULT_ROW_LIMIT,
  type FleetRunContext,
  type FleetRunOptions,
  type FleetRunReport,
  type RunTotals,
  runAcrossTenants,
} from './fleet/run.ts';
export type { ResultRow, RunFunction, RunTenant } from './fleet/task.ts';
export { RunEscapeError, type RunOutcome as TenantRunOutcome, type TenantRunReport } from './fleet/tenant-run.ts';
export type { LedgerStatus, RunDetail, RunSummary, RunTenantRow } from './ledger/history.ts';
export type { RunKind, RunOutcome as LedgerRunOutcome } from './ledger/ledger.ts';
export {
  type LintFileReport,
  type LintFinding,
  type LintInput,
  type LintOptions,
  type LintReport,
  type LintTotals,
  lintMigrations,
} from './lint/lint.ts';
export { lintJson, lintText } from './lint/render.ts';
export type { LintScope, RuleName, Severity } from './lint/rules.ts';
export type { DriftReport } from './migrations/drift.ts';
export type {
  FanoutReport,
  TenantOutcome,
  TenantReport,
  TenantServerPools,
  Totals,
} from './migrations/fanout.ts';
export { type Escape, SchemaEscapeError } from './migrations/guard.ts';
export type { SharedRunReport } from './migrations/master.ts';
export { type Direction, digestOf } from './migrations/plan.ts';
export { type RollbackOptions, RollbackRefusedError } from './migrations/rollback.ts';
export {
  folderSource,
  listMigrations,
  type Migration,
  type MigrationFile,
  type MigrationModule,
  type MigrationSource,
} from './migrations/source.ts';
export {
  collectStatus,
  type StatusOptions,
  type StatusReport,
  type TenantState,
  type TenantStatusRow,
} from './migrations/status.ts';
export { MASTER_TARGET, MASTER_TRACKING_TABLE, TENANT_TRACKING_TABLE, tenantTarget } from './migrations/targets.ts';
export type { SchemaTarget } from './migrations/tracking.ts';
export {
  MigrationFailedError,
  type MigrationResult,
  MissingFilesError,
  RollbackBlockedError,
  type RunFailure,
  type RunSettings,
  runSchema,
  SchemaMissingError,
  SchemaNameError,
  type SchemaRunReport,
} from './migrations/unit.ts';
export { type Amount, parseAmount, parseWaves, type StopReason } from './migrations/waves.ts';
export { ExtensionUnavailableError } from './provisioning/extensions.ts';
export {
  OrphanSchemaError,
  type ProvisionOptions,
  type ProvisionReport,
  provision,
} from './provisioning/provisioner.ts';
export {
  collectFleetReport,
  type ErrorGroup,
  type FleetReport,
  type FleetVersion,
  type RunWithFailures,
} from './report/fleet.ts';
export { renderFleetHtml } from './report/html.ts';
export {
  INIT_SCRIPTS,
  type InitLanguage,
  type InitOptions,
  type InitReport,
  type InitStep,
  initProject,
  TOOLKIT_MASTER_MIGRATIONS,
} from './scaffold/init.ts';
export {
  type AdoptedTenant,
  type AdoptOptions,
  type AdoptReport,
  adoptTenants,
  type OrgIdEntry,
  type OrgIdSource,
  parseOrgMap,
  type RefusedTenant,
  readOrgMap,
} from './tenants/adopt.ts';
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
 * given, it connects with the project's configuration (`configFromProject`: config file, `.env`,
 * environment) and closes the connection afterwards; pass `{ knex, config }` to use the
 * application's pool.
 *
 * @example
 * const { schema, outcome } = await provisionTenant('org_2abc'); // 'tid_…', 'provisioned'
 */
export async function provisionTenant(
  orgId: string,
  options: { toolkit?: Toolkit; knex?: Knex; config?: ToolkitConfig } = {},
): Promise<ProvisionReport> {
  if (options.toolkit) return options.toolkit.provisionTenant(orgId);
  const config = options.config ?? (await configFromProject());
  if (options.knex) return createToolkit({ knex: options.knex, config }).provisionTenant(orgId);
  const toolkit = await openToolkit(config);
  try {
    return await toolkit.provisionTenant(orgId);
  } finally {
    await toolkit.close();
  }
}

export {
  CITUS_MIN_MAJOR,
  type CitusInfo,
  CitusUnavailableError,
  detectCitus,
  distributeSchema,
  nonReferenceTargets,
  type ReferencedTable,
  resolveCitus,
  schemaNodes,
} from './citus/citus.ts';
export type { CitusMode } from './config/config.ts';
export { PgCopyFailedError } from './db/pg-copy.ts';
export type { DumpResult } from './db/pg-dump.ts';
export { PgDumpFailedError, PgDumpUnavailableError } from './db/pg-dump.ts';
// Types that the exports above mention, so that users can name them.
export type { RunTask, TaskResult } from './fleet/task.ts';
export type { Retention } from './ledger/ledger.ts';
export type { LintFileStatus } from './lint/lint.ts';
export { RULE_NAMES } from './lint/rules.ts';
export type { DriftGroup, DriftOutlier, ObjectDiff, TenantRef } from './migrations/drift.ts';
export type { AppliedVersion } from './migrations/status.ts';
export type { MigrationStatus } from './migrations/unit.ts';
export type { DropSourceReport } from './provisioning/drop-source.ts';
export {
  type LifecycleOutcome,
  type LifecycleReport,
  TenantStatusError,
} from './provisioning/lifecycle.ts';
export type { MoveCleanup, MoveOptions, MoveReport, MoveStep, MoveStepReport } from './provisioning/move.ts';
export type { MoveVerification } from './provisioning/move-verify.ts';
export type { RetryOptions, RetryOutcome, RetryReport, RetryTenantReport } from './provisioning/retry.ts';
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
  TenantArchivedError,
  TenantDeletedError,
  TenantMovingError,
  TenantNotFoundError,
  TenantUnavailableError,
  type TenantUnavailableReason,
} from './runtime/errors.ts';
export { type SessionLeakEvent, TenantRoleError } from './runtime/isolation.ts';
export type { RefusalReason } from './tenants/adopt.ts';
export {
  AppRoleMissingError,
  ensureTenantRole,
  ensureTenantRoles,
  type TenantRoleOutcome,
  type TenantRoleResult,
  type TenantRolesReport,
  tenantRoleName,
} from './tenants/roles.ts';
