import type { Command } from 'commander';
import { withToolkit } from '../context.ts';
import { createOutput, masterRun, type Output, show } from '../render.ts';
import { migrateTenants, type TenantFlags, tenantFlags } from './tenants.ts';

/** `migrate`: master, then every tenant — the one command a deploy job runs. */
export function registerMigrate(program: Command): void {
  tenantFlags(
    program.command('migrate').description('apply master migrations, then tenant migrations to every ACTIVE tenant'),
  ).action(async (flags: TenantFlags) => {
    const json = flags.json ?? false;
    const out = createOutput(json);
    await withToolkit(flags, async (tk) => {
      const master = await tk.migrateMaster({ dryRun: flags.dryRun ?? false });
      if (!json) show(out, masterRun, master);
      if (master.error || (flags.dryRun && master.migrations.length > 0)) {
        // A dry-run with pending master migrations cannot check the tenants against a public
        // schema that does not exist yet: it reports the master part and stops there.
        if (!master.error && !json) out.line('Dry run: tenants not checked until the master migrations are applied');
        process.exitCode = 1;
        out.document({ command: 'migrate', master, tenants: null });
        return;
      }
      // In --json mode the tenant part renders nothing of its own: one document for the whole command.
      const silent: Output = { json: true, line: () => undefined, document: () => undefined };
      const tenants = await migrateTenants(tk, json ? silent : out, 'migrate', flags);
      out.document({ command: 'migrate', master, tenants });
    });
  });
}
