import type { Knex } from 'knex';
import { lockForTransaction } from '../db/locks.ts';
import { MigrationSourceError } from '../errors.ts';
import type { Migration } from './source.ts';

/**
 * Checksums of applied migration files, one row per (scope, name): every tenant applies the
 * same file, so one row covers the fleet. Kept beside Knex's tracking tables, which stay in
 * Knex's own format. Like Flyway's validate, a file edited after it was applied is refused.
 */
const TABLE = 'knex_migrations_checksums';

export type ChecksumScope = 'master' | 'shared' | 'tenant';

async function exists(knex: Knex): Promise<boolean> {
  const result = await knex.raw('select to_regclass(?) is not null as present', [`public.${TABLE}`]);
  return Boolean(result.rows[0]?.present);
}

/**
 * Refuses the run (MigrationSourceError naming the file) when an applied file has changed on
 * disk. Returns the names whose checksum is already recorded.
 */
export async function verifyChecksums(
  knex: Knex,
  scope: ChecksumScope,
  migrations: readonly Migration[],
): Promise<ReadonlySet<string>> {
  if (migrations.length === 0 || !(await exists(knex))) return new Set();
  const rows: { name: string; checksum: string }[] = await knex
    .withSchema('public')
    .from(TABLE)
    .select('name', 'checksum')
    .where('scope', scope)
    .whereIn(
      'name',
      migrations.map((m) => m.name),
    );
  const recorded = new Map(rows.map((row) => [row.name, row.checksum]));
  for (const migration of migrations) {
    const checksum = recorded.get(migration.name);
    if (checksum !== undefined && checksum !== migration.checksum) {
      throw new MigrationSourceError(
        `Migration ${migration.name} was edited after it was applied (checksum differs): restore the file and put the change in a new migration`,
        { file: migration.file },
      );
    }
  }
  return new Set(recorded.keys());
}

/** Records the checksums of files that have just been applied somewhere (first writer wins). */
export async function recordChecksums(
  knex: Knex,
  scope: ChecksumScope,
  migrations: readonly Migration[],
  alreadyRecorded: ReadonlySet<string> = new Set(),
): Promise<void> {
  migrations = migrations.filter((m) => !alreadyRecorded.has(m.name));
  if (migrations.length === 0) return;
  await knex.transaction(async (trx) => {
    // Serialised so that two runs creating the table at once do not trip over each other.
    await lockForTransaction(trx, `toolkit:${TABLE}`);
    await trx.raw(
      `create table if not exists public.${TABLE} (
         scope varchar(16) not null,
         name varchar(255) not null,
         checksum varchar(64) not null,
         recorded_at timestamptz not null default now(),
         primary key (scope, name))`,
    );
    await trx
      .withSchema('public')
      .from(TABLE)
      .insert(migrations.map((m) => ({ scope, name: m.name, checksum: m.checksum })))
      .onConflict(['scope', 'name'])
      .ignore();
  });
}
