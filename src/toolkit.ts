import type { Knex } from 'knex';
import type { ToolkitConfig } from './config/config.ts';
import { type OpenOptions, openDatabase } from './db/connection.ts';
import { recordChecksums, verifyChecksums } from './migrations/checksums.ts';
import { type FanoutReport, runTenants } from './migrations/fanout.ts';
import { runMaster } from './migrations/master.ts';
import type { RunSettings, SchemaRunReport } from './migrations/runner.ts';
import { folderSource, type Migration, type MigrationSource } from './migrations/source.ts';
import { collectStatus, type StatusReport } from './migrations/status.ts';
import { type ProvisionMemo, type ProvisionReport, provision } from './provisioning/provisioner.ts';
import { registryKeepsDigest } from './tenants/registry.ts';

export interface TenantRunOptions {
  /** Limit the run to these org ids. */
  readonly orgIds?: readonly string[];
  /** Tenants at once; defaults to the pool size. */
  readonly concurrency?: number;
  readonly failFast?: boolean;
  /** Read every tenant's tracking table instead of trusting the registry digests. */
  readonly verify?: boolean;
  readonly onStart?: (total: number, toRun: number) => void;
  readonly onTenant?: Parameters<typeof runTenants>[3]['onTenant'];
}

/** The toolkit's operations over one shared pool. Every CLI command is one call of these. */
export interface Toolkit {
  readonly knex: Knex;
  readonly config: ToolkitConfig;
  /** Where the pool points, for messages. */
  readonly describe: string;
  migrateMaster(): Promise<SchemaRunReport>;
  rollbackMaster(options?: { all?: boolean }): Promise<SchemaRunReport>;
  provisionTenant(orgId: string): Promise<ProvisionReport>;
  migrateTenants(options?: TenantRunOptions): Promise<FanoutReport>;
  rollbackTenants(options?: TenantRunOptions & { all?: boolean }): Promise<FanoutReport>;
  status(): Promise<StatusReport>;
  /** Closes the pool (and the embedded engine) if this toolkit opened it. */
  close(): Promise<void>;
}

export interface ToolkitSources {
  readonly master?: MigrationSource;
  readonly tenant?: MigrationSource;
}

/**
 * A toolkit over a Knex instance the application already has (its pool is shared, not
 * closed by `close()`). Migration folders come from the config unless sources are given.
 */
export function createToolkit(options: {
  knex: Knex;
  config: ToolkitConfig;
  sources?: ToolkitSources;
  describe?: string;
  close?: () => Promise<void>;
  poolMax?: number;
}): Toolkit {
  const { knex, config } = options;
  const masterSource = options.sources?.master ?? folderSource(config.masterMigrationsDir, 'MASTER_MIGRATIONS_DIR');
  const tenantSource = options.sources?.tenant ?? folderSource(config.tenantMigrationsDir, 'TENANT_MIGRATIONS_DIR');
  const baseSettings: RunSettings = { lockTimeoutMs: config.lockTimeoutMs };
  // Whether the registry keeps per-tenant digests; remembered once seen (it never goes away).
  let digestKept = false;
  const settings = async (): Promise<RunSettings> => {
    if (!digestKept) digestKept = await registryKeepsDigest(knex).catch(() => false);
    return { ...baseSettings, trackDigest: digestKept };
  };
  const poolMax = options.poolMax ?? config.poolMax;
  let tenantMigrations: Promise<readonly Migration[]> | undefined;
  const loadTenant = (): Promise<readonly Migration[]> => (tenantMigrations ??= tenantSource.load());
  const provisionMemo: ProvisionMemo = {};

  const fanout = async (direction: 'up' | 'down', run: TenantRunOptions & { all?: boolean }): Promise<FanoutReport> => {
    const migrations = await loadTenant();
    const recorded = await verifyChecksums(knex, 'tenant', migrations);
    const report = await runTenants(knex, migrations, await settings(), {
      direction,
      concurrency: Math.max(1, Math.min(run.concurrency ?? poolMax, poolMax)),
      ...(run.orgIds ? { orgIds: run.orgIds } : {}),
      failFast: run.failFast ?? false,
      all: run.all ?? false,
      verify: run.verify ?? false,
      ...(run.onStart ? { onStart: run.onStart } : {}),
      ...(run.onTenant ? { onTenant: run.onTenant } : {}),
    });
    if (direction === 'up') {
      // A tenant now up to date has every local file applied, so every file's checksum is
      // recorded, including those a crashed run applied without getting to record them.
      const complete = report.tenants.some((t) => t.outcome === 'migrated' || t.outcome === 'up-to-date');
      const applied = new Set(report.tenants.flatMap((t) => t.migrations));
      await recordChecksums(
        knex,
        'tenant',
        complete ? migrations : migrations.filter((m) => applied.has(m.name)),
        recorded,
      );
    }
    return report;
  };

  return {
    knex,
    config,
    describe: options.describe ?? 'the configured database',
    migrateMaster: async () => runMaster(knex, await masterSource.load(), baseSettings, 'up'),
    rollbackMaster: async (o = {}) => runMaster(knex, await masterSource.load(), baseSettings, 'down', o),
    provisionTenant: async (orgId) =>
      provision(knex, orgId, {
        migrations: await loadTenant(),
        extensions: config.tenantExtensions,
        settings: await settings(),
        memo: provisionMemo,
      }),
    migrateTenants: (o = {}) => fanout('up', o),
    rollbackTenants: (o = {}) => fanout('down', o),
    status: async () =>
      collectStatus(knex, await masterSource.load(), await loadTenant(), { parallel: Math.min(4, poolMax) }),
    close: options.close ?? (async () => undefined),
  };
}

/** Opens the configured database (or the embedded default) and a toolkit over it. Close it when done. */
export async function openToolkit(
  config: ToolkitConfig,
  options: OpenOptions & { sources?: ToolkitSources } = {},
): Promise<Toolkit> {
  const db = await openDatabase(config, options);
  return createToolkit({
    knex: db.knex,
    config,
    describe: db.describe,
    close: () => db.close(),
    poolMax: db.poolMax,
    ...(options.sources ? { sources: options.sources } : {}),
  });
}
