import type { Knex } from 'knex';
import { NO_CAPABILITIES, RunBooks } from './books.ts';
import { verifyChecksums } from './checksums.ts';
import { UP } from './plan.ts';
import type { Migration } from './source.ts';
import { MASTER_TARGET } from './targets.ts';
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
