import type { Command } from 'commander';
import { validateOrgId } from '../../tenants/naming.ts';
import { type CommonOptions, withToolkit } from '../context.ts';
import { createOutput, show } from '../render.ts';
import { dropSourceRun, moveRun } from '../render-move.ts';

/** `tenant:move` and `tenant:drop-source` (docs/servers.md, "Moving a tenant"): one toolkit call each. */
export function registerMove(program: Command): void {
  program
    .command('tenant:move')
    .description('copy a tenant to another server (pg_dump/pg_restore), verify it, and switch the registry')
    .argument('<org_id>', 'the Clerk organisation id')
    .requiredOption('--to <server>', 'the server to move it to (a TENANT_SERVERS name, or main)')
    .option('--drop-source', 'drop the schema on the old server right after the switch (default: keep it)')
    .option('--json', 'print one JSON document')
    .option('--lock-timeout <duration>', 'how long to wait for earlier transactions and table locks (e.g. 30s)')
    .action(async (orgId: string, flags: CommonOptions & { to: string; dropSource?: boolean }) => {
      validateOrgId(orgId); // before connecting: bad input writes nothing
      const report = await withToolkit(flags, (tk) =>
        tk.moveTenant(orgId, { to: flags.to, ...(flags.dropSource ? { dropSource: true } : {}) }),
      );
      show(createOutput(flags.json ?? false), moveRun, report);
      if (report.error !== null) process.exitCode = 1;
    });

  program
    .command('tenant:drop-source')
    .description('drop the copy of a moved tenant kept on its old server (refused where the tenant lives)')
    .argument('<org_id>', 'the Clerk organisation id')
    .requiredOption('--server <name>', 'the server the tenant moved away from')
    .option('--json', 'print one JSON document')
    .action(async (orgId: string, flags: CommonOptions & { server: string }) => {
      validateOrgId(orgId);
      const report = await withToolkit(flags, (tk) => tk.dropTenantSource(orgId, { server: flags.server }));
      show(createOutput(flags.json ?? false), dropSourceRun, report);
    });
}
