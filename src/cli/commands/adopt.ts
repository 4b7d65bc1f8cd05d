import type { Command } from 'commander';
import pc from 'picocolors';
import { UsageError } from '../../errors.ts';
import type { AdoptReport, OrgIdSource, RefusedTenant } from '../../tenants/adopt.ts';
import { type CommonOptions, withToolkit } from '../context.ts';
import { createOutput, type Renderer, show } from '../render.ts';

interface AdoptFlags extends CommonOptions {
  readonly map?: string;
  readonly query?: string;
  readonly dryRun?: boolean;
}

/** `tenants:adopt --map orgs.csv | --query "select …"`: registers tenant schemas made before the toolkit. */
export function registerAdopt(program: Command): void {
  program
    .command('tenants:adopt')
    .description('register existing tid_ schemas (made by Knex scripts) as ACTIVE tenants, with digest and checksums')
    .option('--map <file>', 'org ids: a .csv/.txt file (one a line) or a .json array')
    .option('--query <sql>', 'org ids: the first column of this SELECT, run in a read-only transaction')
    .option('--dry-run', 'show what would be adopted; write nothing')
    .option('--json', 'print one JSON document')
    .action(async (flags: AdoptFlags) => {
      const { adoptTenants, readOrgMap } = await import('../../tenants/adopt.ts');
      const source = orgIdSource(flags, readOrgMap); // bad flags and map files are refused before connecting
      const report = await withToolkit(flags, (tk) =>
        adoptTenants(tk.knex, tk.tenantSource, source, { dryRun: flags.dryRun ?? false }),
      );
      show(createOutput(flags.json ?? false), adoptRun, report);
    });
}

function orgIdSource(flags: AdoptFlags, readOrgMap: (file: string) => string[]): OrgIdSource {
  if ((flags.map === undefined) === (flags.query === undefined))
    throw new UsageError('Give the org ids with exactly one of --map <file> and --query <sql>');
  if (flags.map !== undefined) return { kind: 'list', orgIds: readOrgMap(flags.map) };
  return { kind: 'query', sql: flags.query ?? '' };
}

/** Lines shown per list in text; `--json` lists everything. */
const SHOWN = 50;

function listed<T>(items: readonly T[], line: (item: T) => string): string[] {
  const lines = items.slice(0, SHOWN).map((item) => `  ${line(item)}`);
  if (items.length > SHOWN) lines.push(pc.dim(`  … and ${items.length - SHOWN} more (--json lists all)`));
  return lines;
}

function refusal(r: RefusedTenant): string {
  if (r.reason === 'not-tracked')
    return `${r.orgId} → ${r.schema}: no knex_migrations_tenant table, so not a Knex-migrated tenant (migrate it with Knex into that table, then adopt again)`;
  if (r.reason === 'schema-registered')
    return `${r.orgId} → ${r.schema}: the registry gives this schema to ${r.otherOrgId}`;
  return `${r.orgId} → ${r.schema}: same schema as ${r.otherOrgId}, given earlier (a hash collision)`;
}

/** The report of `tenants:adopt`, as JSON and as text. */
export const adoptRun: Renderer<AdoptReport> = {
  json: (report) => ({ command: 'tenants:adopt', ...report }),
  text: (report) => {
    const verb = report.dryRun ? 'would adopt' : 'adopted';
    const lines = [
      `${report.dryRun ? 'Dry run, nothing written: ' : ''}${report.given} org ids: ${report.adopted.length} ${verb}, ` +
        `${report.alreadyRegistered.length} already registered, ${report.refused.length} refused, ` +
        `${report.notFound.length} without a schema; ${report.unmatched.length} tid_ schema${report.unmatched.length === 1 ? '' : 's'} matching no org id`,
    ];
    if (report.adopted.length > 0) {
      lines.push(report.dryRun ? 'Would adopt (ACTIVE):' : 'Adopted (ACTIVE):');
      lines.push(...listed(report.adopted, (a) => `${a.orgId} → ${a.schema} (${a.applied} applied)`));
    }
    if (report.alreadyRegistered.length > 0) {
      lines.push('Already registered (nothing to do):');
      lines.push(...listed(report.alreadyRegistered, (a) => `${a.orgId} → ${a.schema}`));
    }
    if (report.refused.length > 0) {
      lines.push(pc.yellow('Refused (not registered):'));
      lines.push(...listed(report.refused, refusal));
    }
    if (report.notFound.length > 0) {
      lines.push(pc.yellow('No such schema (not registered):'));
      lines.push(...listed(report.notFound, (a) => `${a.orgId} → ${a.schema}`));
    }
    if (report.unmatched.length > 0) {
      lines.push('tid_ schemas matching no org id given (left untouched):');
      lines.push(...listed(report.unmatched, (schema) => schema));
    }
    const notInFolder = report.adopted.filter((a) => a.notInFolder.length > 0);
    for (const a of notInFolder.slice(0, SHOWN)) {
      lines.push(
        pc.yellow(
          `warning: ${a.orgId}: applied but not in the migration folder: ${a.notInFolder.join(', ')} (migrate:tenants will refuse this tenant until the files are back)`,
        ),
      );
    }
    if (report.checksums.recorded > 0)
      lines.push(`Checksums ${report.dryRun ? 'to record' : 'recorded'}: ${report.checksums.recorded} files`);
    if (report.checksums.conflicts.length > 0) {
      lines.push(
        pc.yellow(
          `warning: edited after they were applied (recorded checksum differs, kept): ${report.checksums.conflicts.join(', ')}; migrate:tenants refuses to run until the files are restored`,
        ),
      );
    }
    if (!report.digestKept)
      lines.push(pc.yellow('warning: public.tenants has no migrations_digest column: run `pnpm migrate:master`'));
    return lines;
  },
};
