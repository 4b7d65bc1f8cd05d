import type { Knex } from 'knex';
import { recordChecksums, verifyChecksums } from './checksums.ts';
import { type RunSettings, runSchema, type SchemaRunReport } from './runner.ts';
import type { Migration } from './source.ts';
import { MASTER_TARGET } from './targets.ts';

/**
 * Applies pending master migrations to `public` as one batch (or reverts the last batch, or
 * all with `all`), tracked in `public.knex_migrations_master` in Knex's format.
 */
export async function runMaster(
  knex: Knex,
  migrations: readonly Migration[],
  settings: RunSettings,
  direction: 'up' | 'down',
  options: { all?: boolean } = {},
): Promise<SchemaRunReport> {
  const recorded = await verifyChecksums(knex, 'master', migrations);
  const report = await runSchema(knex, MASTER_TARGET, migrations, settings, direction, options);
  if (direction === 'up' && report.migrations.length > 0) {
    await recordChecksums(
      knex,
      'master',
      migrations.filter((m) => report.migrations.includes(m.name)),
      recorded,
    );
  }
  return report;
}
