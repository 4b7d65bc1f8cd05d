import type { Command } from 'commander';
import { UsageError } from '../../errors.ts';
import { validateOrgId } from '../../tenants/naming.ts';
import { confirmByTyping, isInteractive } from '../confirm.ts';
import { type CommonOptions, positiveInteger, withToolkit } from '../context.ts';
import { createOutput, show } from '../render.ts';
import { lifecycleRun, retryRun } from '../render-lifecycle.ts';

/**
 * The tenant lifecycle (docs/lifecycle.md): `tenants:retry` (repair), `tenant:archive`,
 * `tenant:restore` and `tenant:drop`. Each is one call of the toolkit.
 */
export function registerLifecycle(program: Command): void {
  program
    .command('tenants:retry')
    .description('provision again every FAILED tenant and every PROVISIONING one whose provisioning crashed')
    .option(
      '--concurrency <n>',
      'tenants provisioned at once (default 4, at most the pool size)',
      positiveInteger('--concurrency'),
    )
    .option('--json', 'print one JSON document')
    .option('--lock-timeout <duration>', 'give up waiting for a table lock after this long (e.g. 5s)')
    .action(async (flags: CommonOptions & { concurrency?: number }) => {
      const report = await withToolkit(flags, (tk) =>
        tk.retryTenants(flags.concurrency === undefined ? {} : { concurrency: flags.concurrency }),
      );
      show(createOutput(flags.json ?? false), retryRun, report);
      if (report.totals.failed > 0) process.exitCode = 1;
    });

  program
    .command('tenant:archive')
    .description('stop serving a tenant (status ARCHIVED); its schema and data are kept')
    .argument('<org_id>', 'the Clerk organisation id')
    .option('--json', 'print one JSON document')
    .action(async (orgId: string, flags: CommonOptions) => {
      validateOrgId(orgId); // before connecting: bad input writes nothing
      const report = await withToolkit(flags, (tk) => tk.archiveTenant(orgId));
      show(createOutput(flags.json ?? false), lifecycleRun, report);
    });

  program
    .command('tenant:restore')
    .description('serve an archived tenant again, migrated to the current version first')
    .argument('<org_id>', 'the Clerk organisation id')
    .option('--json', 'print one JSON document')
    .option('--lock-timeout <duration>', 'give up waiting for a table lock after this long (e.g. 5s)')
    .action(async (orgId: string, flags: CommonOptions) => {
      validateOrgId(orgId);
      const report = await withToolkit(flags, (tk) => tk.restoreTenant(orgId));
      show(createOutput(flags.json ?? false), lifecycleRun, report);
      if (report.outcome === 'failed') process.exitCode = 1;
    });

  program
    .command('tenant:drop')
    .description("drop an archived tenant's schema (and role); its registry row is kept as DELETED")
    .argument('<org_id>', 'the Clerk organisation id')
    .option('--dump <file>', 'first write a pg_dump of the schema to this file (refused if pg_dump is missing)')
    .option('--yes', 'do not ask for the org id to be typed again (required off a terminal)')
    .option('--json', 'print one JSON document')
    .action(async (orgId: string, flags: CommonOptions & { dump?: string; yes?: boolean }) => {
      validateOrgId(orgId);
      const io = { input: process.stdin, output: process.stderr };
      if (!flags.yes && !isInteractive(io)) {
        // Before connecting: nobody is there to type the org id again.
        throw new UsageError(
          'tenant:drop asks for the org id to be typed again on a terminal; off a terminal, pass --yes',
          {
            code: 'E_CONFIRM',
          },
        );
      }
      const report = await withToolkit(flags, async (tk) => {
        if (!flags.yes) {
          const { findTenantByOrgId } = await import('../../tenants/registry.ts');
          const tenant = await findTenantByOrgId(tk.knex, orgId);
          // Only an ARCHIVED tenant is worth the question; the drop itself refuses the others.
          if (tenant?.status === 'ARCHIVED') {
            const what = `${orgId} (schema ${tenant.schema})`;
            const prompt = `This drops schema ${tenant.schema} and every table in it${flags.dump ? ` (dumped to ${flags.dump} first)` : ''}.\nType the org id (${orgId}) to confirm: `;
            await confirmByTyping(io, orgId, what, prompt);
          }
        }
        return tk.dropTenant(orgId, flags.dump === undefined ? {} : { dumpFile: flags.dump });
      });
      show(createOutput(flags.json ?? false), lifecycleRun, report);
    });
}
