import type { Command } from 'commander';
import pc from 'picocolors';
import type { Migration, MigrationSource } from '../../migrations/source.ts';
import { withToolkit } from '../context.ts';
import { createOutput, masterRun, provisionRun, show } from '../render.ts';
import { statusReport } from '../render-status.ts';
import { migrateTenants } from './tenants.ts';

export const DEMO_ORGS = ['default_tenant', 'org_demo_acme', 'org_demo_globex'] as const;

/** The previous release: every tenant migration but the newest, which the demo then deploys safely. */
function previousRelease(source: MigrationSource): MigrationSource {
  return { load: async (): Promise<readonly Migration[]> => (await source.load()).slice(0, -1) };
}

/**
 * `demo`: the whole flow on the embedded default (or the configured database): master, three
 * tenants provisioned at the previous release, then the newest tenant migration deployed the
 * safe way (a dry-run on every tenant, a canary of one, then the rest), and the status.
 */
export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('provision three tenants, then deploy a new tenant migration safely: dry-run, canary, the rest')
    .action(async () => {
      const { createToolkit } = await import('../../toolkit.ts');
      const out = createOutput(false);
      await withToolkit({}, async (tk) => {
        out.line(pc.bold(`1. Master migrations on ${tk.location}`));
        const master = await tk.migrateMaster();
        show(out, masterRun, master);
        if (master.error) {
          process.exitCode = 1;
          return;
        }
        out.line(pc.bold('\n2. Provision tenants (at the previous release)'));
        const previous = createToolkit({
          knex: tk.knex,
          config: tk.config,
          sources: { tenant: previousRelease(tk.tenantSource) },
        });
        for (const orgId of DEMO_ORGS) {
          const report = await previous.provisionTenant(orgId);
          show(out, provisionRun, report);
          if (report.outcome === 'failed') process.exitCode = 1;
        }
        out.line(pc.bold('\n3. A new release: check it on every tenant first (pnpm migrate:tenants --dry-run)'));
        const dry = await migrateTenants(tk, out, 'migrate:tenants', { dryRun: true });
        if ((dry.totals['would-fail'] ?? 0) > 0) return;
        out.line(pc.bold('\n4. Deploy it: a canary of one, then the rest (pnpm migrate:tenants --canary 1)'));
        await migrateTenants(tk, out, 'migrate:tenants', { canary: '1' });
        out.line(pc.bold('\n5. Status (pnpm migrate:status)'));
        show(out, statusReport, await tk.status());
      });
    });
}
