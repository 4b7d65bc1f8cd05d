import type { Command } from 'commander';
import { validateOrgId } from '../../tenants/naming.ts';
import { type CommonOptions, withToolkit } from '../context.ts';
import { createOutput, provisionRun, show } from '../render.ts';

/** `provision:tenant <org_id>`: create, migrate and activate one organisation's schema. */
export function registerProvision(program: Command): void {
  program
    .command('provision:tenant')
    .description("create and migrate an organisation's schema (idempotent)")
    .argument('<org_id>', 'the Clerk organisation id, e.g. org_2abc123def456')
    .option('--json', 'print one JSON document')
    .option('--lock-timeout <duration>', 'give up waiting for a table lock after this long (e.g. 5s)')
    .action(async (orgId: string, options: CommonOptions) => {
      validateOrgId(orgId); // before connecting: bad input writes nothing
      const report = await withToolkit(options, (tk) => tk.provisionTenant(orgId));
      show(createOutput(options.json ?? false), provisionRun, report);
      if (report.outcome === 'failed') process.exitCode = 1;
    });
}
