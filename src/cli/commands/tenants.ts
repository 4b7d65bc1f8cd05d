import type { Command } from 'commander';
import type { FanoutReport } from '../../migrations/fanout.ts';
import type { Toolkit } from '../../toolkit.ts';
import { type CommonOptions, collect, positiveInteger, withToolkit } from '../context.ts';
import { createOutput, fanoutProgress, type Output, renderFanout } from '../render.ts';

export interface TenantFlags extends CommonOptions {
  readonly tenant?: string[];
  readonly concurrency?: number;
  readonly failFast?: boolean;
  readonly all?: boolean;
  readonly verify?: boolean;
}

/** Adds the flags shared by the tenant fan-out commands. */
export function tenantFlags(command: Command): Command {
  return command
    .option('--tenant <org_id>', 'only this tenant (repeatable)', collect)
    .option(
      '--concurrency <n>',
      'tenants at once (default: the pool size, DB_POOL_MAX)',
      positiveInteger('--concurrency'),
    )
    .option('--verify', "read every tenant's tracking table instead of trusting the registry's digests")
    .option('--lock-timeout <duration>', 'give up waiting for a table lock after this long (default LOCK_TIMEOUT, 10s)')
    .option('--json', 'print one JSON document');
}

/** Runs a fan-out with progress and renders it; sets exit code 1 when a tenant failed. */
export async function runFanout(
  tk: Toolkit,
  out: Output,
  command: string,
  direction: 'up' | 'down',
  flags: TenantFlags,
): Promise<FanoutReport> {
  const progress = fanoutProgress(out, direction === 'up' ? 'Migrating' : 'Rolling back');
  const options = {
    ...(flags.tenant ? { orgIds: flags.tenant } : {}),
    ...(flags.concurrency ? { concurrency: flags.concurrency } : {}),
    failFast: flags.failFast ?? false,
    verify: flags.verify ?? false,
    onStart: progress.onStart,
    onTenant: progress.onTenant,
  };
  let report: FanoutReport;
  try {
    report =
      direction === 'up'
        ? await tk.migrateTenants(options)
        : await tk.rollbackTenants({ ...options, all: flags.all ?? false });
  } finally {
    progress.stop();
  }
  renderFanout(out, command, report);
  if (report.totals.failed > 0) process.exitCode = 1;
  return report;
}

/** `migrate:tenants` and `rollback:tenants`. */
export function registerTenants(program: Command): void {
  tenantFlags(program.command('migrate:tenants').description('apply pending tenant migrations to every ACTIVE tenant'))
    .option('--fail-fast', 'start no new tenant after the first failure')
    .action(async (flags: TenantFlags) => {
      const out = createOutput(flags.json ?? false);
      await withToolkit(flags, (tk) => runFanout(tk, out, 'migrate:tenants', 'up', flags));
    });

  tenantFlags(program.command('rollback:tenants').description('roll back the last batch of every ACTIVE tenant'))
    .option('--all', 'roll back every batch')
    .option('--fail-fast', 'start no new tenant after the first failure')
    .action(async (flags: TenantFlags) => {
      const out = createOutput(flags.json ?? false);
      await withToolkit(flags, (tk) => runFanout(tk, out, 'rollback:tenants', 'down', flags));
    });
}
