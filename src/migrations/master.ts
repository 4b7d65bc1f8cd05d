import type { Knex } from 'knex';
import { NO_CAPABILITIES, RunBooks } from './books.ts';
import { type ChecksumScope, verifyChecksums } from './checksums.ts';
import { UP } from './plan.ts';
import type { Migration } from './source.ts';
import { MASTER_TARGET, SHARED_TARGET } from './targets.ts';
import { migrateSchema, type RunSettings, type SchemaRunReport } from './unit.ts';

/**
 * Applies pending master migrations to `public` as one batch (or reverts the last batch, or
 * all with `all`), tracked in `public.knex_migrations_master` in Knex's format.
 */
export async function runMaster(
  knex: Knex,
  migrations: readonly Migration[],
  settings: RunSettings,
  direction: 'up' | 'down',
  options: { all?: boolean; dryRun?: boolean } = {},
): Promise<SchemaRunReport> {
  const recorded = await verifyChecksums(knex, 'master', migrations);
  const books = new RunBooks({
    knex,
    capabilities: NO_CAPABILITIES,
    scope: 'master',
    migrations,
    recorded,
    ledger: { mode: 'none' },
  });
  const intent =
    direction === 'up' ? UP : ({ direction, scope: { kind: options.all ? 'all' : 'last-batch' } } as const);
  const dryRun = options.dryRun ?? false;
  const report = await migrateSchema({ knex, migrations, settings, books, dryRun }, MASTER_TARGET, { intent });
  if (report.migrations.length > 0 && !dryRun) await books.close();
  return report;
}

/** One server's shared-migrations run. */
export interface SharedRunReport {
  readonly server: string;
  /** `host:port/database`. */
  readonly location: string;
  readonly report: SchemaRunReport;
}

/**
 * Applies pending shared migrations (`shared-migrations/`) to `public` of every server tenants
 * may live on, main first, one server after another, each tracked in its own
 * `public.knex_migrations_shared`; checksums are kept once, on the main server. A server that
 * fails (or does not answer) is reported and the others go on.
 */
export async function runShared(
  main: Knex,
  servers: readonly { readonly name: string; readonly location: string; readonly knex: () => Knex }[],
  migrations: readonly Migration[],
  settings: RunSettings,
  options: { dryRun?: boolean } = {},
): Promise<SharedRunReport[]> {
  const scope: ChecksumScope = 'shared';
  const recorded = await verifyChecksums(main, scope, migrations);
  const dryRun = options.dryRun ?? false;
  const reports: SharedRunReport[] = [];
  for (const server of servers) {
    const books = new RunBooks({
      knex: main,
      capabilities: NO_CAPABILITIES,
      scope,
      migrations,
      recorded,
      ledger: { mode: 'none' },
    });
    const report = await migrateSchema({ knex: server.knex(), migrations, settings, books, dryRun }, SHARED_TARGET, {
      intent: UP,
    });
    if (report.migrations.length > 0 && !dryRun && !report.error) await books.close();
    reports.push({ server: server.name, location: server.location, report });
  }
  return reports;
}
