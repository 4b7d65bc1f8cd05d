import { createHash } from 'node:crypto';
import type { Migration } from './source.ts';

/**
 * A digest of a set of migration names (order-free): md5 of the sorted names, one per line.
 * The registry keeps each tenant's, written with its tracking rows, so that a tenant whose
 * digest equals the folder's is known up to date without opening its schema.
 */
export function digestOf(names: Iterable<string>): string {
  return createHash('md5')
    .update([...names].sort().join('\n'), 'utf8')
    .digest('hex');
}

/** The set of applied names after `ran` went `direction`. */
export function appliedAfter(
  applied: readonly AppliedMigration[],
  ran: readonly string[],
  direction: Direction,
): string[] {
  const names = new Set(applied.map((row) => row.name));
  for (const name of ran) {
    if (direction === 'up') names.add(name);
    else names.delete(name);
  }
  return [...names];
}

/** A row of a Knex tracking table. */
export interface AppliedMigration {
  readonly name: string;
  readonly batch: number;
}

export type Direction = 'up' | 'down';

/** What a run would do to one schema, computed from the files and the tracking table. */
export interface Plan {
  /** Migrations to run, in the order they run. */
  readonly steps: readonly Migration[];
  /** Applied migrations whose file is gone: the schema is refused, as Knex refuses a corrupt directory. */
  readonly missing: readonly string[];
  /** Pending files older than the newest applied one (merged late from another branch, usually). */
  readonly outOfOrder: readonly string[];
  /** The batch the steps belong to (new batch when going up, the reverted batch going down). */
  readonly batch: number;
}

/** Pending migrations, in name order; the batch is one more than the highest applied. */
export function planUp(local: readonly Migration[], applied: readonly AppliedMigration[]): Plan {
  const appliedNames = new Set(applied.map((row) => row.name));
  const localNames = new Set(local.map((m) => m.name));
  const steps = local.filter((m) => !appliedNames.has(m.name));
  // biome-ignore lint/complexity/useMathMinMax: names are strings, compared as Knex orders them
  const newest = applied.reduce<string>((max, row) => (row.name > max ? row.name : max), '');
  return {
    steps,
    missing: applied.filter((row) => !localNames.has(row.name)).map((row) => row.name),
    outOfOrder: steps.filter((m) => m.name < newest).map((m) => m.name),
    batch: applied.reduce((max, row) => Math.max(max, row.batch), 0) + 1,
  };
}

/**
 * Migrations to revert: the last batch, or every batch with `all`, newest first.
 * `applied` must be in the order they were applied (tracking-table id order).
 */
export function planDown(local: readonly Migration[], applied: readonly AppliedMigration[], all: boolean): Plan {
  const byName = new Map(local.map((m) => [m.name, m]));
  const lastBatch = applied.reduce((max, row) => Math.max(max, row.batch), 0);
  const toRevert = applied.filter((row) => all || row.batch === lastBatch).reverse();
  const missing = toRevert.filter((row) => !byName.has(row.name)).map((row) => row.name);
  return {
    steps: missing.length > 0 ? [] : toRevert.map((row) => byName.get(row.name)!),
    missing,
    outOfOrder: [],
    batch: lastBatch,
  };
}
