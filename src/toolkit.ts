import { existsSync } from 'node:fs';
import type { Knex } from 'knex';
import { resolveCitus, schemaNodes } from './citus/citus.ts';
import { MAIN_SERVER, type ToolkitConfig } from './config/config.ts';
import { type OpenOptions, openDatabase } from './db/connection.ts';
import { prepareDump } from './db/pg-dump.ts';
import { Servers } from './db/servers.ts';
import { RegistryMissingError, UsageError } from './errors.ts';
import { listTenantsReport, type TenantListOptions, type TenantListReport } from './fleet/list.ts';
import { type FleetRunOptions, type FleetRunReport, runAcrossTenants } from './fleet/run.ts';
import {
  getRun,
  type LedgerStatus,
  ledgerStatus,
  listRuns,
  type RunDetail,
  type RunSummary,
} from './ledger/history.ts';
import { type Capabilities, probeCapabilities } from './migrations/books.ts';
import { verifyChecksums } from './migrations/checksums.ts';
import { collectDrift, type DriftReport } from './migrations/drift.ts';
import {
  type FanoutPlan,
  type FanoutReport,
  runTenants,
  type TenantRunOptions,
  type TenantServerPools,
} from './migrations/fanout.ts';
import { runMaster, runShared, type SharedRunReport } from './migrations/master.ts';
import { UP } from './migrations/plan.ts';
import { type RollbackOptions, rollbackPlan } from './migrations/rollback.ts';
import { folderSource, listMigrations, type Migration, type MigrationSource } from './migrations/source.ts';
import { type AppliedVersion, collectStatus, type StatusReport } from './migrations/status.ts';
import type { RunSettings, SchemaRunReport } from './migrations/unit.ts';
import { type DropSourceReport, dropTenantSource } from './provisioning/drop-source.ts';
import {
  archiveTenant,
  dropTenant,
  type LifecycleReport,
  restoreTenant,
  tenantServerOf,
} from './provisioning/lifecycle.ts';
import { type MoveOptions, type MoveReport, moveTenant } from './provisioning/move.ts';
import { type ProvisionReport, provision, provisionMemo } from './provisioning/provisioner.ts';
import { type RetryOptions, type RetryReport, retryTenants } from './provisioning/retry.ts';
import { validateOrgId } from './tenants/naming.ts';
import { changeLabels, serversColumnMissing, validateLabel } from './tenants/registry.ts';

export type { RollbackOptions, TenantRunOptions };

/** Options of a deploy: which tenants, how many at once, and how the ledger names the run. */
export interface MigrateTenantsOptions extends TenantRunOptions {
  /** The command the ledger records (default `migrate:tenants`). */
  readonly command?: string;
}

/** The toolkit's operations over one shared pool. Every CLI command is one call of these. */
export interface Toolkit {
  readonly knex: Knex;
  readonly config: ToolkitConfig;
  /** Where the tenant migrations come from (the configured folder unless another source was given). */
  readonly tenantSource: MigrationSource;
  /** Where the pool points (`host:port` or the embedded folder), for messages. */
  readonly location: string;
  /** @deprecated Use `location`. */
  readonly describe: string;
  /**
   * Whether Citus mode is on (`CITUS`; `auto` detects the extension): asked of the database once
   * per toolkit. Throws CitusUnavailableError when CITUS=on cannot be served, or for a worker node.
   */
  citus(): Promise<boolean>;
  /** Applies pending master migrations (`dryRun`: runs them in a transaction and rolls back). */
  migrateMaster(options?: { dryRun?: boolean }): Promise<SchemaRunReport>;
  rollbackMaster(options?: { all?: boolean }): Promise<SchemaRunReport>;
  /**
   * Applies pending shared migrations (SHARED_MIGRATIONS_DIR, default `shared-migrations/`) to
   * `public` on every server tenants live on, main included (`migrate:master` runs it after the
   * master migrations). Empty when there is no such folder.
   */
  migrateShared(options?: { dryRun?: boolean }): Promise<SharedRunReport[]>;
  /** Provisions one organisation; `labels` are added to it, `dryRun` writes nothing. */
  provisionTenant(
    orgId: string,
    options?: {
      labels?: readonly string[];
      dryRun?: boolean;
      /** The server a new tenant goes to (`TENANT_SERVERS`; default: the placement rule). */
      server?: string;
    },
  ): Promise<ProvisionReport>;
  /** Adds (or removes) labels on a registered tenant; returns its labels after the change. */
  labelTenant(orgId: string, labels: readonly string[], options?: { remove?: boolean }): Promise<string[]>;
  migrateTenants(options?: MigrateTenantsOptions): Promise<FanoutReport>;
  /**
   * Rolls back what the last deploy run applied, exactly (tenants it did not migrate are left
   * alone); `run` names another run; `lastBatch` and `all` are the explicit Knex-style scopes.
   */
  rollbackTenants(options?: TenantRunOptions & RollbackOptions): Promise<FanoutReport>;
  /**
   * Where master and every tenant stand. Trusts registry digests unless `verify` (then every
   * tracking table is read); `drift` also fingerprints every tenant schema (see `collectDrift`).
   */
  status(options?: {
    verify?: boolean;
    drift?: boolean;
    /** Only tenants on these servers (`main` is the registry's own). */
    servers?: readonly string[];
  }): Promise<StatusReport & { readonly ledger: LedgerStatus | null; readonly drift?: DriftReport }>;
  /**
   * `tenants:run`: a SQL file or a module's `run(knex, tenant)` in every selected tenant, each
   * in its own transaction under its lock and search path (see `runAcrossTenants`).
   */
  runAcrossTenants(file: string, options?: FleetRunOptions): Promise<FleetRunReport>;
  /** `tenants:list`: every tenant with its status, version, labels, last error and times. */
  listTenantsReport(options?: TenantListOptions): Promise<TenantListReport>;
  /**
   * `tenants:retry`: provisions again every FAILED tenant and every PROVISIONING one whose
   * provisioning is no longer running (its lock is free); a running one is left `in-progress`.
   */
  retryTenants(options?: RetryOptions): Promise<RetryReport>;
  /** `tenant:archive`: ARCHIVED under the tenant's lock (after a running migration); schema and data kept. */
  archiveTenant(orgId: string): Promise<LifecycleReport>;
  /** `tenant:restore`: an ARCHIVED tenant migrated to the current folder and ACTIVE again, in one unit run. */
  restoreTenant(orgId: string): Promise<LifecycleReport>;
  /**
   * `tenant:drop`: an ARCHIVED tenant's schema (and role) dropped and its row marked DELETED, under
   * its lock; `dumpFile` first writes a `pg_dump -n <schema>` there (a server only).
   */
  dropTenant(orgId: string, options?: { dumpFile?: string }): Promise<LifecycleReport>;
  /**
   * `tenant:move`: copies an ACTIVE tenant's schema to server `to` (pg_dump/pg_restore), verifies
   * the copy, and switches the registry in one transaction, under the tenant's lock on its source
   * (MOVING meanwhile: the runtime refuses it). A failed step leaves it ACTIVE on its source, the
   * copy dropped; the source is kept unless `dropSource` (see docs/servers.md, "Moving a tenant").
   */
  moveTenant(orgId: string, options: MoveOptions): Promise<MoveReport>;
  /** `tenant:drop-source`: drops the copy a move kept on `server`, refused where the tenant lives. */
  dropTenantSource(orgId: string, options: { server: string }): Promise<DropSourceReport>;
  /** Recent runs from the ledger (one-tenant runs too with `all`). */
  runs(options?: { all?: boolean; limit?: number }): Promise<RunSummary[]>;
  /** One run with its tenants. */
  run(id: number): Promise<RunDetail | undefined>;
  /** Closes the pool (and the embedded engine) if this toolkit opened it. */
  close(): Promise<void>;
}

/** Migration sources that replace the configured folders (tests, or migrations kept elsewhere). */
export interface ToolkitSources {
  readonly master?: MigrationSource;
  readonly tenant?: MigrationSource;
  readonly shared?: MigrationSource;
}

/**
 * A toolkit over a Knex instance the application already has (its pool is shared, not
 * closed by `close()`). Migration folders come from the config unless sources are given.
 */
export function createToolkit(options: {
  knex: Knex;
  config: ToolkitConfig;
  sources?: ToolkitSources;
  location?: string;
  close?: () => Promise<void>;
  poolMax?: number;
}): Toolkit {
  const { knex, config } = options;
  const masterSource = options.sources?.master ?? folderSource(config.masterMigrationsDir, 'MASTER_MIGRATIONS_DIR');
  // Optional: a project without the folder has no shared migrations.
  const sharedSource =
    options.sources?.shared ??
    (existsSync(config.sharedMigrationsDir)
      ? folderSource(config.sharedMigrationsDir, 'SHARED_MIGRATIONS_DIR')
      : undefined);
  const tenantSource = options.sources?.tenant ?? folderSource(config.tenantMigrationsDir, 'TENANT_MIGRATIONS_DIR');
  const settings: RunSettings = { lockTimeoutMs: config.lockTimeoutMs, escapeGuard: config.escapeGuard };
  const poolMax = options.poolMax ?? config.poolMax;
  let tenantMigrations: Promise<readonly Migration[]> | undefined;
  const loadTenant = (): Promise<readonly Migration[]> => {
    tenantMigrations ??= tenantSource.load();
    return tenantMigrations;
  };
  const memo = provisionMemo();
  // Tenants on several servers (TENANT_SERVERS): each server's pool opens on first use.
  const servers = config.servers.length > 0 ? new Servers(config, knex) : undefined;
  const pools: TenantServerPools | undefined = servers;
  const location = options.location ?? 'the configured database';
  let citusMode: Promise<boolean> | undefined;
  const citus = (): Promise<boolean> => {
    citusMode ??= resolveCitus(knex, config.citus);
    // A failed probe (e.g. the server was down) is asked again next time.
    citusMode.catch(() => (citusMode = undefined));
    return citusMode;
  };

  /** A fan-out: capabilities probed for this run only, checksums verified before any tenant. */
  const fanout = async (
    run: TenantRunOptions,
    plan: (capabilities: Capabilities, migrations: readonly Migration[]) => Promise<FanoutPlan>,
  ): Promise<FanoutReport> => {
    for (const orgId of run.orgIds ?? []) validateOrgId(orgId); // bad input: refused before anything is read
    const migrations = await loadTenant();
    const capabilities = await probeCapabilities(knex);
    if (!capabilities.registry) throw new RegistryMissingError();
    const recorded = await verifyChecksums(knex, 'tenant', migrations);
    if (servers && !capabilities.servers) throw serversColumnMissing();
    const context = {
      knex,
      migrations,
      settings,
      capabilities,
      recorded,
      poolMax,
      retention: config.ledgerRetention,
      ...(pools ? { servers: pools } : {}),
    };
    return runTenants(context, await plan(capabilities, migrations), run);
  };

  const toolkit: Toolkit = {
    knex,
    config,
    tenantSource,
    location,
    describe: location,
    citus,
    migrateMaster: async (o = {}) => runMaster(knex, await masterSource.load(), settings, 'up', o),
    rollbackMaster: async (o = {}) => runMaster(knex, await masterSource.load(), settings, 'down', o),
    migrateShared: async (o = {}) => {
      const migrations = sharedSource ? await sharedSource.load() : [];
      if (migrations.length === 0) return [];
      const names = servers?.names ?? [MAIN_SERVER];
      const targets = names.map((name) => ({
        name,
        location: servers ? servers.describe(name) : location,
        knex: () => servers?.knexFor(name) ?? knex,
      }));
      return runShared(knex, targets, migrations, settings, o);
    },
    provisionTenant: async (orgId, o = {}) =>
      provision(knex, orgId, {
        migrations: await loadTenant(),
        extensions: config.tenantExtensions,
        settings,
        memo,
        ...(config.tenantRoles ? { tenantRoles: { appRole: config.tenantAppRole } } : {}),
        ...(o.labels ? { labels: o.labels } : {}),
        ...(o.dryRun ? { dryRun: true } : {}),
        ...((await citus()) ? { citus: true } : {}),
        ...(servers ? { servers } : {}),
        ...(o.server !== undefined ? { server: o.server } : {}),
      }),
    labelTenant: async (orgId, labels, o = {}) => {
      validateOrgId(orgId);
      for (const label of labels) validateLabel(label);
      if (!(await probeCapabilities(knex)).labels) {
        throw new UsageError('This registry has no labels yet: run `pnpm migrate:master` first');
      }
      const after = await changeLabels(knex, orgId, labels, o.remove ?? false);
      if (after === undefined) {
        throw new UsageError(`Not registered: ${orgId} (provision it with pnpm provision:tenant)`, {
          code: 'E_UNKNOWN_TENANT',
        });
      }
      return after;
    },
    migrateTenants: (o = {}) =>
      fanout(o, async () => ({
        command: o.command ?? 'migrate:tenants',
        kind: 'deploy',
        direction: 'up',
        intentFor: () => UP,
        flags: flagsOf(o),
      })),
    rollbackTenants: (o = {}) =>
      fanout(o, (capabilities, migrations) => rollbackPlan(knex, capabilities, migrations, o, o.orgIds)),
    status: async (o = {}) => {
      const versions = new Map<string, AppliedVersion>();
      // Names only: status evaluates no migration file (and loads no TypeScript loader for them).
      let report = await collectStatus(knex, await listMigrations(masterSource), await listMigrations(tenantSource), {
        parallel: Math.min(4, poolMax),
        verify: o.verify ?? false,
        ...(o.drift ? { onVersion: (schema: string, v: AppliedVersion) => versions.set(schema, v) } : {}),
        ...(pools ? { pools } : {}),
        ...(o.servers ? { servers: o.servers } : {}),
      });
      const capabilities = await probeCapabilities(knex);
      const ledger = capabilities.ledger ? await ledgerStatus(knex) : null;
      if (await citus()) report = await withNodes(knex, report);
      if (!o.drift) return { ...report, ledger };
      const orgIds = new Map(report.tenants.map((t) => [t.schema, t.orgId]));
      // Each schema fingerprinted on its own server; a server gone since status read it is told once.
      const serverOf = new Map(report.tenants.map((t) => [t.schema, t.server ?? MAIN_SERVER]));
      const unreachable = [...(report.unreachable ?? [])];
      const drift = await collectDrift(knex, versions, (schema) => orgIds.get(schema) ?? '', {
        serverOf: (schema) => serverOf.get(schema) ?? MAIN_SERVER,
        onUnreachable: (down) => unreachable.push(down),
        ...(pools ? { pools } : {}),
      });
      return { ...report, ...(unreachable.length > 0 ? { unreachable } : {}), ledger, drift };
    },
    runAcrossTenants: (file, o = {}) =>
      runAcrossTenants(
        {
          knex,
          lockTimeoutMs: settings.lockTimeoutMs,
          escapeGuard: settings.escapeGuard !== false,
          poolMax,
          retention: config.ledgerRetention,
          ...(pools ? { servers: pools } : {}),
        },
        file,
        o,
      ),
    listTenantsReport: async (o = {}) =>
      listTenantsReport(knex, await loadTenant(), {
        parallel: Math.min(4, poolMax),
        ...(pools ? { pools } : {}),
        ...o,
      }),
    retryTenants: async (o = {}) => {
      return retryTenants(knex, (orgId) => toolkit.provisionTenant(orgId), {
        ...o,
        poolMax,
        ...(servers ? { servers } : {}),
      });
    },
    // Each acts on the server holding the tenant's schema (read from its registry row).
    archiveTenant: async (orgId) => {
      const recorded = (await probeCapabilities(knex)).servers;
      return archiveTenant(knex, orgId, { recorded, ...(servers ? { pools: servers } : {}) });
    },
    restoreTenant: async (orgId) => {
      const migrations = await loadTenant();
      const capabilities = await probeCapabilities(knex);
      if (!capabilities.registry) throw new RegistryMissingError();
      const recorded = await verifyChecksums(knex, 'tenant', migrations);
      const where = { recorded: capabilities.servers, ...(servers ? { pools: servers } : {}) };
      return restoreTenant(knex, orgId, { migrations, settings, capabilities, recorded }, where);
    },
    dropTenant: async (orgId, o = {}) => {
      validateOrgId(orgId);
      const where = { recorded: (await probeCapabilities(knex)).servers, ...(servers ? { pools: servers } : {}) };
      if (o.dumpFile === undefined) return dropTenant(knex, orgId, { servers: where });
      // pg_dump runs against the server holding the schema: checked (version, file) before anything is locked.
      const server = await tenantServerOf(knex, orgId, where);
      const target = server === MAIN_SERVER ? config.connection : config.servers.find((s) => s.name === server)!.target;
      const dump = await prepareDump(servers?.knexFor(server) ?? knex, target, o.dumpFile, config.lockTimeoutMs);
      return dropTenant(knex, orgId, { servers: where, dump: server === MAIN_SERVER ? dump : { ...dump, server } });
    },
    moveTenant: async (orgId, o) => {
      validateOrgId(orgId);
      if (!servers) {
        throw new UsageError('tenant:move needs several servers: no TENANT_SERVERS are configured', {
          code: 'E_NO_SERVERS',
        });
      }
      if (await citus())
        throw new UsageError('tenant:move does not move Citus distributed schemas', { code: 'E_CITUS' });
      return moveTenant({ knex, servers, config }, orgId, o);
    },
    dropTenantSource: (orgId, o) => dropTenantSource({ knex, servers }, orgId, o),
    runs: async (o = {}) => ((await probeCapabilities(knex)).ledger ? listRuns(knex, o) : []),
    run: async (id) => ((await probeCapabilities(knex)).ledger ? getRun(knex, id) : undefined),
    close: async () => {
      await servers?.close();
      await options.close?.();
    },
  };
  return toolkit;
}

/** Citus mode: each tenant's row names its node (`host:port`; null when its schema is not distributed). */
async function withNodes(knex: Knex, report: StatusReport): Promise<StatusReport> {
  const nodes = await schemaNodes(
    knex,
    report.tenants.map((t) => t.schema),
  );
  return { ...report, tenants: report.tenants.map((t) => ({ ...t, node: nodes.get(t.schema) ?? null })) };
}

/** The options as the ledger records them: what was asked, not the callbacks. */
function flagsOf(options: MigrateTenantsOptions): Record<string, unknown> {
  const {
    onStart: _start,
    onTenant: _tenant,
    command: _command,
    ...flags
  } = options as MigrateTenantsOptions & Record<string, unknown>;
  return flags;
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
    location: db.describe,
    close: () => db.close(),
    poolMax: db.poolMax,
    ...(options.sources ? { sources: options.sources } : {}),
  });
}
