import type { Command } from 'commander';
import { type CommonOptions, withToolkit } from '../context.ts';
import { createOutput, show, statusReport } from '../render.ts';

/** `migrate:status` (alias `status`): master history, where every tenant stands, the last run. */
export function registerStatus(program: Command): void {
  program
    .command('migrate:status')
    .alias('status')
    .description('show master history and every tenant: status, applied count, pending migrations')
    .option('--json', 'print one JSON document')
    .action(async (options: CommonOptions) => {
      const report = await withToolkit(options, (tk) => tk.status());
      show(createOutput(options.json ?? false), statusReport, report);
    });
}
