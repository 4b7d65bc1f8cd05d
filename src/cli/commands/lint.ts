import type { Command } from 'commander';
import { type CommonOptions, withToolkit } from '../context.ts';
import { createOutput, show } from '../render.ts';

interface LintFlags extends CommonOptions {
  readonly tenantDir?: string;
  /** False with `--no-master`. */
  readonly master?: boolean;
}

/** `migrate:lint`: runs the migrations in a rolled-back transaction and checks their SQL; exit 1 on errors. */
export function registerLint(program: Command): void {
  program
    .command('migrate:lint')
    .description(
      'check tenant (and pending master) migrations with the PostgreSQL parser, in a rolled-back transaction',
    )
    .option('--tenant-dir <dir>', 'lint this folder of tenant migrations (default: TENANT_MIGRATIONS_DIR)')
    .option('--no-master', 'lint tenant migrations only')
    .option('--json', 'print one JSON document')
    .option('--lock-timeout <duration>', 'give up waiting for a table lock after this long (e.g. 5s)')
    .action(async (flags: LintFlags) => {
      const [{ lintMigrations }, { lintRenderer }, { folderSource }] = await Promise.all([
        import('../../lint/lint.ts'),
        import('../../lint/render.ts'),
        import('../../migrations/source.ts'),
      ]);
      const report = await withToolkit(flags, async (tk) => {
        const tenant = await folderSource(
          flags.tenantDir ?? tk.config.tenantMigrationsDir,
          'TENANT_MIGRATIONS_DIR',
        ).load();
        const master =
          flags.master === false
            ? undefined
            : await folderSource(tk.config.masterMigrationsDir, 'MASTER_MIGRATIONS_DIR').load();
        return lintMigrations(
          tk.knex,
          { tenant, ...(master ? { master } : {}) },
          { extensions: tk.config.tenantExtensions, lockTimeoutMs: tk.config.lockTimeoutMs, citus: await tk.citus() },
        );
      });
      show(createOutput(flags.json ?? false), lintRenderer, report);
      if (!report.ok) process.exitCode = 1;
    });
}
