import type { Command } from 'commander';
import pc from 'picocolors';
import { withToolkit } from '../context.ts';
import { createOutput, masterRun, provisionRun, show, statusReport } from '../render.ts';
import { migrateTenants } from './tenants.ts';

export const DEMO_ORGS = ['default_tenant', 'org_demo_acme', 'org_demo_globex'] as const;

/** `demo`: the whole flow on the embedded default (or the configured database). */
export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('migrate master, provision three tenants, migrate tenants and print status')
    .action(async () => {
      const out = createOutput(false);
      await withToolkit({}, async (tk) => {
        out.line(pc.bold(`1. Master migrations on ${tk.location}`));
        const master = await tk.migrateMaster();
        show(out, masterRun, master);
        if (master.error) {
          process.exitCode = 1;
          return;
        }
        out.line(pc.bold('\n2. Provision tenants'));
        for (const orgId of DEMO_ORGS) {
          const report = await tk.provisionTenant(orgId);
          show(out, provisionRun, report);
          if (report.outcome === 'failed') process.exitCode = 1;
        }
        out.line(pc.bold('\n3. Migrate every tenant'));
        await migrateTenants(tk, out, 'migrate:tenants', {});
        out.line(pc.bold('\n4. Status'));
        show(out, statusReport, await tk.status());
      });
    });
}
