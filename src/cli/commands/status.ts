import type { Command } from 'commander';
import { type CommonOptions, withToolkit } from '../context.ts';
import { createOutput, renderStatus } from '../render.ts';

/** `migrate:status` (alias `status`): master history and where every tenant stands. */
export function registerStatus(program: Command): void {
  program
    .command('migrate:status')
    .alias('status')
    .description('show master history and every tenant: status, applied count, pending migrations')
    .option('--json', 'print one JSON document')
    .action(async (options: CommonOptions) => {
      const out = createOutput(options.json ?? false);
      const report = await withToolkit(options, (tk) => tk.status());
      renderStatus(out, report);
    });
}
