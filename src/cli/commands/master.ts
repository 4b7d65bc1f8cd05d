import type { Command } from 'commander';
import { type CommonOptions, withToolkit } from '../context.ts';
import { createOutput, masterRun, show } from '../render.ts';

/** `migrate:master` and `rollback:master`. */
export function registerMaster(program: Command): void {
  program
    .command('migrate:master')
    .description('apply pending master migrations to the public schema')
    .option('--json', 'print one JSON document')
    .option('--lock-timeout <duration>', 'give up waiting for a table lock after this long (e.g. 5s)')
    .action(async (options: CommonOptions) => {
      const report = await withToolkit(options, async (tk) => {
        const master = await tk.migrateMaster();
        // The shared migrations (every tenant server's `public`) after the master ones, if those succeeded.
        return master.error ? master : { ...master, shared: await tk.migrateShared() };
      });
      show(createOutput(options.json ?? false), masterRun, report);
      if (report.error || ('shared' in report && report.shared.some((s) => s.report.error))) process.exitCode = 1;
    });

  program
    .command('rollback:master')
    .description('roll back the last batch of master migrations')
    .option('--all', 'roll back every batch')
    .option('--json', 'print one JSON document')
    .option('--lock-timeout <duration>', 'give up waiting for a table lock after this long (e.g. 5s)')
    .action(async (options: CommonOptions & { all?: boolean }) => {
      const report = await withToolkit(options, (tk) => tk.rollbackMaster({ all: options.all ?? false }));
      show(createOutput(options.json ?? false), masterRun, report);
      if (report.error) process.exitCode = 1;
    });
}
