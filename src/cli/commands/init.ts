import type { Command } from 'commander';
import pc from 'picocolors';
import { UsageError } from '../../errors.ts';
import type { InitLanguage, InitReport } from '../../scaffold/init.ts';
import { createOutput, type Renderer, show } from '../render.ts';

interface InitFlags {
  readonly force?: boolean;
  readonly dryRun?: boolean;
  readonly language?: string;
  readonly json?: boolean;
}

/** `init`: scaffolds the folders, the toolkit's master migrations, `.env.example` and package scripts. */
export function registerInit(program: Command): void {
  program
    .command('init')
    .description('set up this project: migration folders, the registry migrations, .env.example, package scripts')
    .option('--force', 'overwrite files that exist (and package scripts of the same name)')
    .option('--dry-run', 'print what it would write; write nothing')
    .option('--language <ts|js>', 'TypeScript (.ts) or JavaScript (.mjs) files (default: ts when the project uses it)')
    .option('--json', 'print one JSON document')
    .action(async (flags: InitFlags) => {
      if (flags.language !== undefined && flags.language !== 'ts' && flags.language !== 'js')
        throw new UsageError(`--language must be ts or js, got "${flags.language}"`);
      const [{ initProject }, { readProjectConfig }] = await Promise.all([
        import('../../scaffold/init.ts'),
        import('../../config/project.ts'),
      ]);
      // The folders as configured (environment, then a config file), else the defaults.
      const file = await readProjectConfig(process.cwd(), process.env.TENANT_MIGRATE_CONFIG);
      const report = initProject({
        cwd: process.cwd(),
        force: flags.force ?? false,
        dryRun: flags.dryRun ?? false,
        ...(flags.language ? { language: flags.language as InitLanguage } : {}),
        masterMigrationsDir: process.env.MASTER_MIGRATIONS_DIR || file.MASTER_MIGRATIONS_DIR || 'master-migrations',
        tenantMigrationsDir: process.env.TENANT_MIGRATIONS_DIR || file.TENANT_MIGRATIONS_DIR || 'tenant-migrations',
      });
      show(createOutput(flags.json ?? false), initRun, report);
    });
}

const MARK = { create: pc.green, overwrite: pc.yellow, keep: pc.dim, update: pc.green };

export const initRun: Renderer<InitReport> = {
  json: (report) => ({ command: 'init', ...report }),
  text: (report) => {
    const lines = report.steps.map(
      (step) =>
        `  ${MARK[step.action](step.action.padEnd(10))} ${step.path}${step.detail ? pc.dim(` (${step.detail})`) : ''}`,
    );
    const written = report.steps.filter((s) => s.action !== 'keep').length;
    const head = report.dryRun
      ? `Would write ${written} file(s) in ${report.cwd} (--dry-run: nothing written)`
      : `Set up ${report.cwd} for tenant-migrate (${report.language === 'ts' ? 'TypeScript' : 'JavaScript'})`;
    const next = report.dryRun
      ? []
      : [
          '',
          'Next: copy .env.example to .env and set DATABASE_URL (or leave it unset for the embedded engine), then',
          '  npx tenant-migrate migrate:master && npx tenant-migrate provision:tenant <org_id>',
        ];
    return [head, ...lines, ...next];
  },
};
