import type { Command } from 'commander';
import { validateOrgId } from '../../tenants/naming.ts';
import { validateLabel } from '../../tenants/registry.ts';
import { type CommonOptions, collect, withToolkit } from '../context.ts';
import { createOutput, provisionRun, show } from '../render.ts';

/** `provision:tenant <org_id>`: create, migrate and activate one organisation's schema. */
export function registerProvision(program: Command): void {
  program
    .command('provision:tenant')
    .description("create and migrate an organisation's schema (idempotent)")
    .argument('<org_id>', 'the Clerk organisation id, e.g. org_2abc123def456')
    .option('--label <name>', 'add this label to the tenant (repeatable)', collect)
    .option('--server <name>', 'the server a new tenant goes to (TENANT_SERVERS, or main; default: the placement rule)')
    .option('--dry-run', 'create and migrate the schema in a transaction, report, and roll back: nothing is written')
    .option('--json', 'print one JSON document')
    .option('--lock-timeout <duration>', 'give up waiting for a table lock after this long (e.g. 5s)')
    .action(async (orgId: string, options: CommonOptions & { label?: string[]; dryRun?: boolean; server?: string }) => {
      validateOrgId(orgId); // before connecting: bad input writes nothing
      for (const label of options.label ?? []) validateLabel(label);
      const report = await withToolkit(options, (tk) =>
        tk.provisionTenant(orgId, {
          ...(options.label ? { labels: options.label } : {}),
          ...(options.dryRun ? { dryRun: true } : {}),
          ...(options.server !== undefined ? { server: options.server } : {}),
        }),
      );
      show(createOutput(options.json ?? false), provisionRun, report);
      if (report.outcome === 'failed' || report.outcome === 'would-fail') process.exitCode = 1;
    });
}
