import type { Command } from 'commander';
import pc from 'picocolors';
import { UsageError } from '../../errors.ts';
import type { TenantRolesReport } from '../../tenants/roles.ts';
import { type CommonOptions, collect, withToolkit } from '../context.ts';
import { createOutput, plural, type Renderer, show } from '../render.ts';

interface RolesFlags extends CommonOptions {
  readonly tenant?: string[];
}

/**
 * `tenants:roles`: with `TENANT_ROLES=on`, creates (or repairs) the per-tenant roles of tenants
 * that already exist: those provisioned before the setting was turned on, or whose grants were
 * lost. New tenants get theirs when they are provisioned. Idempotent; exit 1 if any tenant failed.
 */
export function registerRoles(program: Command): void {
  program
    .command('tenants:roles')
    .description('TENANT_ROLES=on: create or repair each existing tenant’s role (<schema>_app) and its grants')
    .option('--tenant <org_id>', 'only this tenant (repeatable)', collect)
    .option('--json', 'print one JSON document')
    .action(async (flags: RolesFlags) => {
      const { ensureTenantRoles } = await import('../../tenants/roles.ts');
      const report = await withToolkit(flags, (tk) => {
        if (!tk.config.tenantRoles)
          throw new UsageError(
            'TENANT_ROLES is off: set TENANT_ROLES=on (and TENANT_APP_ROLE) to use per-tenant roles',
          );
        return ensureTenantRoles(tk.knex, tk.config.tenantAppRole, flags.tenant);
      });
      show(createOutput(flags.json ?? false), rolesReport, report);
      if (report.totals.failed > 0) process.exitCode = 1;
    });
}

/** Kept beside its only command (render.ts holds the renderers shared by several). */
const rolesReport: Renderer<TenantRolesReport> = {
  json: (report) => ({ command: 'tenants:roles', ...report }),
  text: (report) => {
    if (report.tenants.length === 0) return ['No tenant schema to give a role to'];
    const lines = report.tenants
      .filter((t) => t.outcome === 'failed')
      .map((t) => pc.red(`${t.orgId} (${t.role}): failed: ${t.error}`));
    const { created, refreshed, failed } = report.totals;
    lines.push(
      `${plural(report.tenants.length, 'tenant')}: ${created} role(s) created, ${refreshed} refreshed, ${failed} failed; each granted to ${report.appRole}`,
    );
    return lines;
  },
};
