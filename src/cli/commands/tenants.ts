import { createInterface } from 'node:readline/promises';
import type { Command } from 'commander';
import { UsageError } from '../../errors.ts';
import type { FanoutReport, TenantRunOptions } from '../../migrations/fanout.ts';
import type { RollbackOptions } from '../../migrations/rollback.ts';
import { type Amount, parseAmount, parseWaves } from '../../migrations/waves.ts';
import { validateLabel } from '../../tenants/registry.ts';
import type { Toolkit } from '../../toolkit.ts';
import { type CommonOptions, collect, positiveInteger, withToolkit } from '../context.ts';
import { createOutput, fanoutProgress, fanoutRun, type Output, show } from '../render.ts';

export interface TenantFlags extends CommonOptions {
  readonly tenant?: string[];
  readonly concurrency?: number;
  readonly failFast?: boolean;
  readonly verify?: boolean;
  readonly label?: string[];
  readonly server?: string[];
  readonly dryRun?: boolean;
  readonly sql?: boolean;
  readonly maxFailures?: Amount;
  readonly canary?: string;
  readonly canaryTenant?: string[];
  readonly waves?: Amount[];
}

interface RollbackFlags extends TenantFlags {
  readonly run?: number;
  readonly cascade?: boolean;
  readonly lastBatch?: boolean;
  readonly all?: boolean;
  readonly yes?: boolean;
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
    .option('--label <name>', 'only tenants with this label (repeatable: any of them)', collect)
    .option('--server <name>', 'only tenants on this server (repeatable; TENANT_SERVERS, main)', collect)
    .option('--fail-fast', 'start no new tenant after the first failure (= --max-failures 1)')
    .option('--max-failures <n|p%>', 'start no new tenant once this many have failed', (v: string) =>
      parseAmount(v, '--max-failures'),
    )
    .option('--canary <n|p%|label:name>', 'run these tenants first; stop if any of them fails')
    .option('--canary-tenant <org_id>', 'a canary tenant (repeatable; instead of the first n)', collect)
    .option('--waves <list>', 'successive waves, e.g. 1,10%,50%,100%; a wave with a failure stops the run', parseWaves)
    .option('--dry-run', "run each tenant's batch in a transaction, report, and roll it back: nothing is written")
    .option('--sql', 'with --dry-run: print the SQL the first tenant with work would run')
    .option('--verify', "read every tenant's tracking table instead of trusting the registry's digests")
    .option('--lock-timeout <duration>', 'give up waiting for a table lock after this long (default LOCK_TIMEOUT, 10s)')
    .option('--json', 'print one JSON document');
}

/** The one settings value of a tenant run, built once from the flags. */
export function runOptions(flags: TenantFlags): TenantRunOptions {
  if (flags.sql && !flags.dryRun) throw new UsageError('--sql goes with --dry-run (it shows what a dry-run executed)');
  if (flags.failFast && flags.maxFailures) throw new UsageError('Choose one of --fail-fast and --max-failures');
  if (flags.canary !== undefined && flags.canaryTenant)
    throw new UsageError('Choose one of --canary and --canary-tenant');
  for (const label of [...(flags.label ?? []), ...(flags.canary?.startsWith('label:') ? [flags.canary.slice(6)] : [])])
    validateLabel(label);
  const canary = flags.canary;
  return {
    ...(flags.tenant ? { orgIds: flags.tenant } : {}),
    ...(flags.concurrency ? { concurrency: flags.concurrency } : {}),
    failFast: flags.failFast ?? false,
    verify: flags.verify ?? false,
    ...(flags.label ? { labels: flags.label } : {}),
    ...(flags.server ? { servers: flags.server } : {}),
    ...(flags.maxFailures ? { maxFailures: flags.maxFailures } : {}),
    ...(canary === undefined
      ? {}
      : canary.startsWith('label:')
        ? { canaryLabel: canary.slice(6) }
        : { canary: parseAmount(canary, '--canary') }),
    ...(flags.canaryTenant ? { canaryTenants: flags.canaryTenant } : {}),
    ...(flags.waves ? { waves: flags.waves } : {}),
    ...(flags.dryRun ? { dryRun: true } : {}),
    ...(flags.sql ? { sql: true } : {}),
  };
}

/** Runs a fan-out with progress and renders it; sets exit code 1 when a tenant failed. */
export async function runFanout(
  out: Output,
  command: string,
  verb: string,
  run: (progress: Pick<TenantRunOptions, 'onStart' | 'onTenant' | 'onWave'>) => Promise<FanoutReport>,
): Promise<FanoutReport> {
  const progress = fanoutProgress(out, verb);
  let report: FanoutReport;
  try {
    report = await run({ onStart: progress.onStart, onTenant: progress.onTenant, onWave: progress.onWave });
  } finally {
    progress.stop();
  }
  show(out, fanoutRun(command), report);
  // A failure, a dry-run's predicted failure, or a run stopped early (canary, budget) is exit 1.
  if (report.totals.failed > 0 || (report.totals['would-fail'] ?? 0) > 0 || report.stoppedBy !== null)
    process.exitCode = 1;
  return report;
}

/** Deploys the tenant migrations (also the tenant part of `migrate`). */
export function migrateTenants(tk: Toolkit, out: Output, command: string, flags: TenantFlags): Promise<FanoutReport> {
  return runFanout(out, 'migrate:tenants', 'Migrating', (progress) =>
    tk.migrateTenants({ ...runOptions(flags), ...progress, command }),
  );
}

/** `migrate:tenants` and `rollback:tenants`. */
export function registerTenants(program: Command): void {
  tenantFlags(
    program.command('migrate:tenants').description('apply pending tenant migrations to every ACTIVE tenant'),
  ).action(async (flags: TenantFlags) => {
    const out = createOutput(flags.json ?? false);
    await withToolkit(flags, (tk) => migrateTenants(tk, out, 'migrate:tenants', flags));
  });

  tenantFlags(
    program
      .command('rollback:tenants')
      .description('roll back exactly what the last deploy run applied (tenants it did not migrate are left alone)'),
  )
    .option('--run <id>', 'roll back this run instead (see pnpm migrate:runs)', positiveInteger('--run'))
    .option('--cascade', 'with --run: also roll back later batches that sit on top of it')
    .option('--last-batch', "roll back each tenant's latest batch, whatever run applied it (asks first)")
    .option('--all', 'roll back every batch of every selected tenant (asks first)')
    .option('-y, --yes', 'do not ask for confirmation (needed with --last-batch or --all off a terminal)')
    .action(async (flags: RollbackFlags) => {
      const scope = rollbackScope(flags);
      if ((scope.all || scope.lastBatch) && !flags.dryRun)
        await confirm(flags, scope.all ? 'EVERY batch' : 'the latest batch');
      const out = createOutput(flags.json ?? false);
      await withToolkit(flags, (tk) =>
        runFanout(out, 'rollback:tenants', 'Rolling back', (progress) =>
          tk.rollbackTenants({ ...runOptions(flags), ...scope, ...progress }),
        ),
      );
    });
}

function rollbackScope(flags: RollbackFlags): RollbackOptions {
  const chosen = [flags.run !== undefined, flags.lastBatch, flags.all].filter(Boolean).length;
  if (chosen > 1) throw new UsageError('Choose one of --run, --last-batch and --all');
  if (flags.cascade && flags.run === undefined) throw new UsageError('--cascade goes with --run <id>');
  return {
    ...(flags.run !== undefined ? { run: flags.run } : {}),
    ...(flags.cascade ? { cascade: true } : {}),
    ...(flags.lastBatch ? { lastBatch: true } : {}),
    ...(flags.all ? { all: true } : {}),
  };
}

/** A rollback the ledger does not scope is named twice: on a terminal by typing yes, elsewhere by --yes. */
async function confirm(flags: RollbackFlags, what: string): Promise<void> {
  if (flags.yes) return;
  const who = flags.tenant ? `tenants ${flags.tenant.join(', ')}` : 'EVERY ACTIVE tenant';
  if (!process.stdin.isTTY || !process.stderr.isTTY) {
    throw new UsageError(`This rolls back ${what} of ${who} whatever run applied it: add --yes to confirm`);
  }
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await rl.question(`Roll back ${what} of ${who}, whatever run applied it? Type yes: `);
    if (answer.trim().toLowerCase() !== 'yes') throw new UsageError('Not confirmed: nothing was rolled back');
  } finally {
    rl.close();
  }
}

/** `tenants:label <org_id> <label…>`: adds labels to a tenant (`--remove` takes them off). */
export function registerLabel(program: Command): void {
  program
    .command('tenants:label')
    .description('add labels to a tenant (e.g. canary, internal, a plan tier); --label selects by them')
    .argument('<org_id>', 'the tenant')
    .argument('<labels...>', 'one or more labels')
    .option('--remove', 'remove these labels instead')
    .option('--json', 'print one JSON document')
    .action(async (orgId: string, labels: string[], flags: CommonOptions & { remove?: boolean }) => {
      const out = createOutput(flags.json ?? false);
      const after = await withToolkit(flags, (tk) => tk.labelTenant(orgId, labels, { remove: flags.remove ?? false }));
      out.document({ command: 'tenants:label', orgId, labels: after });
      out.line(`${orgId}: ${after.length === 0 ? '(no labels)' : after.join(', ')}`);
    });
}
