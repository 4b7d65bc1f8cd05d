import type { Command } from 'commander';
import type { FleetRunOptions, FleetRunReport } from '../../fleet/run.ts';
import { type CommonOptions, collect, positiveInteger, withToolkit } from '../context.ts';
import { createOutput, fanoutProgress, show } from '../render.ts';
import { fleetRun, ranLine, tenantList } from '../render-fleet.ts';

interface RunFlags extends CommonOptions {
  readonly tenant?: string[];
  readonly label?: string[];
  readonly server?: string[];
  readonly status?: string[];
  readonly concurrency?: number;
  readonly failFast?: boolean;
  readonly maxFailures?: string;
  readonly dryRun?: boolean;
  /** Commander's `--no-transaction`: true unless given. */
  readonly transaction: boolean;
  readonly allowOutsideSchema?: boolean;
  readonly rows?: number;
}

interface ListFlags extends CommonOptions {
  readonly status?: string[];
  readonly label?: string[];
  readonly server?: string[];
  readonly behind?: boolean;
  readonly verify?: boolean;
}

/** `tenants:run <file>` and `tenants:list`. */
export function registerFleet(program: Command): void {
  program
    .command('tenants:run')
    .description("run a SQL file or a module's run(knex, tenant) in every selected tenant, one transaction each")
    .argument('<file>', 'a .sql file, or a .ts/.js/.mjs/.cjs module exporting run(knex, tenant)')
    .option('--tenant <org_id>', 'only this tenant (repeatable)', collect)
    .option('--label <name>', 'only tenants with this label (repeatable: any of them)', collect)
    .option('--server <name>', 'only tenants on this server (repeatable; TENANT_SERVERS, main)', collect)
    .option('--status <status>', 'only tenants in this registry status (repeatable; default ACTIVE)', collect)
    .option(
      '--concurrency <n>',
      'tenants at once (default: the pool size, DB_POOL_MAX)',
      positiveInteger('--concurrency'),
    )
    .option('--fail-fast', 'start no new tenant after the first failure (= --max-failures 1)')
    .option('--max-failures <n|p%>', 'start no new tenant once this many have failed')
    .option('--dry-run', 'run in each tenant, report, and roll back: nothing is written')
    .option(
      '--no-transaction',
      'no transaction: statements commit one by one (session-scoped search path, reset after)',
    )
    .option('--allow-outside-schema', 'do not refuse a tenant whose run changes objects outside its schema')
    .option('--rows <n>', 'result rows kept per tenant (default 100)', positiveInteger('--rows'))
    .option('--lock-timeout <duration>', 'give up waiting for a table lock after this long (default LOCK_TIMEOUT, 10s)')
    .option('--json', "print one JSON document, with each tenant's result rows")
    .action(async (file: string, flags: RunFlags) => {
      const options = await runOptions(flags);
      const out = createOutput(flags.json ?? false);
      const progress = fanoutProgress(out, 'Running', ranLine);
      let report: FleetRunReport;
      try {
        report = await withToolkit(flags, (tk) =>
          tk.runAcrossTenants(file, { ...options, onStart: progress.onStart, onTenant: progress.onTenant }),
        );
      } finally {
        progress.stop();
      }
      show(out, fleetRun, report);
      const t = report.totals;
      if (t.failed > 0 || (t['would-fail'] ?? 0) > 0 || report.stoppedBy !== null) process.exitCode = 1;
    });

  program
    .command('tenants:list')
    .description('list tenants: status, version, pending migrations, labels, last error, created, last migrated')
    .option('--status <status>', 'only tenants in this registry status (repeatable)', collect)
    .option('--label <name>', 'only tenants with this label (repeatable: any of them)', collect)
    .option('--server <name>', 'only tenants on this server (repeatable; TENANT_SERVERS, main)', collect)
    .option('--behind', 'only tenants with pending tenant migrations')
    .option('--verify', "read every tenant's tracking table instead of trusting the registry's digests")
    .option('--json', 'print one JSON document')
    .action(async (flags: ListFlags) => {
      const { validateLabel } = await import('../../tenants/registry.ts');
      for (const label of flags.label ?? []) validateLabel(label);
      const out = createOutput(flags.json ?? false);
      const report = await withToolkit(flags, (tk) =>
        tk.listTenantsReport({
          ...(flags.status ? { statuses: flags.status } : {}),
          ...(flags.label ? { labels: flags.label } : {}),
          ...(flags.server ? { servers: flags.server } : {}),
          behind: flags.behind ?? false,
          verify: flags.verify ?? false,
        }),
      );
      show(out, tenantList, report);
    });
}

/** The one settings value of a run, from the flags (checked before the database is opened). */
async function runOptions(flags: RunFlags): Promise<FleetRunOptions> {
  const [{ parseAmount }, { validateLabel }, { validateOrgId }] = await Promise.all([
    import('../../migrations/waves.ts'),
    import('../../tenants/registry.ts'),
    import('../../tenants/naming.ts'),
  ]);
  for (const label of flags.label ?? []) validateLabel(label);
  for (const orgId of flags.tenant ?? []) validateOrgId(orgId);
  return {
    ...(flags.tenant ? { orgIds: flags.tenant } : {}),
    ...(flags.label ? { labels: flags.label } : {}),
    ...(flags.server ? { servers: flags.server } : {}),
    ...(flags.status ? { statuses: flags.status } : {}),
    ...(flags.concurrency ? { concurrency: flags.concurrency } : {}),
    ...(flags.failFast ? { failFast: true } : {}),
    ...(flags.maxFailures ? { maxFailures: parseAmount(flags.maxFailures, '--max-failures') } : {}),
    ...(flags.dryRun ? { dryRun: true } : {}),
    ...(flags.transaction === false ? { transaction: false } : {}),
    ...(flags.allowOutsideSchema ? { allowOutsideSchema: true } : {}),
    ...(flags.rows ? { rowLimit: flags.rows } : {}),
  };
}
