import type { Command } from 'commander';
import pc from 'picocolors';
import { UsageError } from '../../errors.ts';
import { TENANT_TRACKING_TABLE } from '../../migrations/targets.ts';
import type { UnlockedTenant, UnlockOutcome } from '../../migrations/tracking.ts';
import { type CommonOptions, collect, withToolkit } from '../context.ts';
import { createOutput } from '../render.ts';

interface UnlockFlags extends CommonOptions {
  readonly tenant?: string[];
  readonly allStuck?: boolean;
}

const SAYS: Record<UnlockOutcome, string> = {
  unlocked: 'Knex lock cleared',
  'not-locked': 'not locked, nothing to do',
  'no-lock-table': 'no Knex lock table, nothing to do',
  'toolkit-running': 'left alone: a toolkit run is migrating this tenant right now',
  'knex-running': 'left alone: a Knex run holds the lock row in its open transaction right now',
};

/**
 * `migrate:unlock`: clears a stuck Knex lock row (`is_locked = 1` in a tenant's
 * `knex_migrations_tenant_lock`, left by a killed `knex migrate:*`), only where no toolkit run
 * holds that tenant's lock. Exit 1 when a tenant was left alone because a run is in progress.
 */
export function registerUnlock(program: Command): void {
  program
    .command('migrate:unlock')
    .description("clear a tenant's stuck Knex lock row (left by a killed knex migrate:*), unless a run holds it")
    .option('--tenant <org_id>', 'this tenant (repeatable)', collect)
    .option('--all-stuck', 'every registered tenant whose Knex lock row is set')
    .option('--json', 'print one JSON document')
    .action(async (flags: UnlockFlags) => {
      const orgIds = flags.tenant ?? [];
      if (orgIds.length > 0 === (flags.allStuck ?? false))
        throw new UsageError('Name the tenants with --tenant <org_id> (repeatable), or pass --all-stuck');
      const which = flags.allStuck ? ({ allStuck: true } as const) : { orgIds };
      const { unlockTenants } = await import('../../migrations/tracking.ts');
      const tenants = await withToolkit(flags, (tk) => unlockTenants(tk.knex, TENANT_TRACKING_TABLE, which));
      const out = createOutput(flags.json ?? false);
      out.document({ command: 'migrate:unlock', tenants });
      for (const line of text(tenants, flags.allStuck ?? false)) out.line(line);
      if (tenants.some(busy)) process.exitCode = 1;
    });
}

function busy(tenant: UnlockedTenant): boolean {
  return tenant.outcome === 'toolkit-running' || tenant.outcome === 'knex-running';
}

function text(tenants: readonly UnlockedTenant[], allStuck: boolean): string[] {
  if (tenants.length === 0) return [allStuck ? 'No tenant has a stuck Knex lock' : 'No tenant'];
  return tenants.map((t) => {
    const line = `${t.orgId} (${t.schema}): ${SAYS[t.outcome]}`;
    return busy(t) ? pc.yellow(line) : t.outcome === 'unlocked' ? pc.green(line) : line;
  });
}
