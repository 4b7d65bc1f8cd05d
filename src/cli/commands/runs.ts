import type { Command } from 'commander';
import { UsageError } from '../../errors.ts';
import { type CommonOptions, positiveInteger, withToolkit } from '../context.ts';
import { createOutput, runDetail, runList, show } from '../render.ts';

/** `migrate:runs [id]`: the run ledger, newest first, or one run tenant by tenant. */
export function registerRuns(program: Command): void {
  program
    .command('migrate:runs')
    .description('list recent tenant migration runs from the ledger, or show one run per tenant')
    .argument('[id]', 'a run id: show that run, tenant by tenant')
    .option('--all', 'include one-tenant runs (provisioning, lazy migrations)')
    .option('--limit <n>', 'how many runs (default 20)', positiveInteger('--limit'))
    .option('--json', 'print one JSON document')
    .action(async (id: string | undefined, options: CommonOptions & { all?: boolean; limit?: number }) => {
      const out = createOutput(options.json ?? false);
      if (id === undefined) {
        const runs = await withToolkit(options, (tk) =>
          tk.runs({ all: options.all ?? false, ...(options.limit ? { limit: options.limit } : {}) }),
        );
        show(out, runList, runs);
        return;
      }
      const runId = positiveInteger('the run id')(id);
      const run = await withToolkit(options, (tk) => tk.run(runId));
      if (!run) throw new UsageError(`There is no run ${runId} in the ledger (see pnpm migrate:runs --all)`);
      show(out, runDetail, run);
    });
}
