import type { Command } from 'commander';
import { type CommonOptions, collect, withToolkit } from '../context.ts';
import { createOutput, show } from '../render.ts';
import { statusRenderer, writeJson } from '../render-status.ts';

interface StatusFlags extends CommonOptions {
  readonly all?: boolean;
  readonly long?: boolean;
  readonly verify?: boolean;
  readonly drift?: boolean;
  readonly server?: string[];
}

/** `migrate:status` (alias `status`): master history, where every tenant stands, the last run, drift. */
export function registerStatus(program: Command): void {
  program
    .command('migrate:status')
    .alias('status')
    .description('show master history and where every tenant stands: pending count and next migration, by state')
    .option('--json', 'print one JSON document (every tenant, every pending name)')
    .option('--all', 'list every tenant (above 50 tenants, up-to-date ones are hidden by default)')
    .option('--long', 'list every pending migration of each tenant, and whole errors')
    .option('--verify', "read every tenant's tracking table instead of trusting the registry digests")
    .option('--drift', 'fingerprint every tenant schema and list those that differ from the others at their version')
    .option('--server <name>', 'only tenants on this server (repeatable; TENANT_SERVERS, main)', collect)
    .action(async (options: StatusFlags) => {
      const report = await withToolkit(options, (tk) =>
        tk.status({
          verify: options.verify ?? false,
          drift: options.drift ?? false,
          ...(options.server ? { servers: options.server } : {}),
        }),
      );
      const renderer = statusRenderer({ all: options.all ?? false, long: options.long ?? false });
      // A fleet's document is written tenant by tenant rather than built as one string.
      if (options.json) await writeJson(process.stdout, renderer.json(report) as Record<string, unknown>, 'tenants');
      else show(createOutput(false), renderer, report);
    });
}
