import { createHash } from 'node:crypto';
import type { Migration } from './source.ts';

/**
 * Planning: which migrations a run applies or reverts in one schema, from the files and the
 * schema's tracking rows. Pure functions: no database, unit-tested in test/unit/.
 */

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

const folderDigests = new WeakMap<readonly { readonly name: string }[], string>();

/** The digest of a loaded folder's names (remembered per loaded folder: a run asks often). */
export function folderDigest(migrations: readonly { readonly name: string }[]): string {
  let digest = folderDigests.get(migrations);
  if (digest === undefined) {
    digest = digestOf(migrations.map((m) => m.name));
    folderDigests.set(migrations, digest);
  }
  return digest;
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

/** Which way a run goes: `up` applies migrations, `down` reverts them. */
export type Direction = 'up' | 'down';

/**
 * What a rollback reverts in one schema:
 * - `last-batch`: its latest batch, whoever applied it (Knex's `migrate:rollback`);
 * - `all`: every batch;
 * - `batch`: exactly the named migrations of one batch, refused when a later batch sits on top
 *   unless `cascade` (then the later batches go first).
 */
export type RollbackScope =
  | { readonly kind: 'last-batch' }
  | { readonly kind: 'all' }
  | { readonly kind: 'batch'; readonly batch: number; readonly names: readonly string[]; readonly cascade: boolean };

/** What one schema's run is asked to do. */
export type Intent = { readonly direction: 'up' } | { readonly direction: 'down'; readonly scope: RollbackScope };

export const UP: Intent = { direction: 'up' };

/** What a run would do to one schema, computed from the files and the tracking table. */
export interface Plan<M extends { readonly name: string } = Migration> {
  /** Migrations to run, in the order they run. */
  readonly steps: readonly M[];
  /** Applied migrations whose file is gone: the schema is refused, as Knex refuses a corrupt directory. */
  readonly missing: readonly string[];
  /** Pending files older than the newest applied one (merged late from another branch, usually). */
  readonly outOfOrder: readonly string[];
  /** The batch the steps belong to (new batch going up, the reverted batch going down). */
  readonly batch: number;
  /** Going down with scope `batch`: later batches on top of it, which block it without `cascade`. */
  readonly blockedBy: readonly number[];
}

/** Pending migrations, in name order; the batch is one more than the highest applied. */
export function planUp<M extends { readonly name: string } = Migration>(
  local: readonly M[],
  applied: readonly AppliedMigration[],
): Plan<M> {
  const appliedNames = new Set(applied.map((row) => row.name));
  const localNames = new Set(local.map((m) => m.name));
  const steps = local.filter((m) => !appliedNames.has(m.name));
  // biome-ignore lint/complexity/useMathMinMax: names are strings, compared as Knex orders them
  const newest = applied.reduce<string>((max, row) => (row.name > max ? row.name : max), '');
  return {
    steps,
    missing: applied.filter((row) => !localNames.has(row.name)).map((row) => row.name),
    outOfOrder: steps.filter((m) => m.name < newest).map((m) => m.name),
    batch: latestBatch(applied) + 1,
    blockedBy: [],
  };
}

/**
 * Migrations to revert, newest first. `applied` must be in the order they were applied
 * (tracking-table id order). With scope `batch`, only the names given that are still applied
 * in that batch are reverted: a second rollback of the same run finds nothing.
 */
export function planDown(
  local: readonly Migration[],
  applied: readonly AppliedMigration[],
  scope: RollbackScope,
): Plan {
  const byName = new Map(local.map((m) => [m.name, m]));
  const last = latestBatch(applied);
  let toRevert: AppliedMigration[];
  let batch = last;
  let blockedBy: number[] = [];
  if (scope.kind === 'all') toRevert = [...applied];
  else if (scope.kind === 'last-batch') toRevert = applied.filter((row) => row.batch === last);
  else {
    batch = scope.batch;
    const names = new Set(scope.names);
    const own = applied.filter((row) => row.batch === scope.batch && names.has(row.name));
    const later = own.length === 0 ? [] : applied.filter((row) => row.batch > scope.batch);
    blockedBy = [...new Set(later.map((row) => row.batch))].sort((a, b) => a - b);
    toRevert = scope.cascade || later.length === 0 ? [...later, ...own] : [];
    // Applied order within the selection, newest last, so that reversing reverts newest first.
    toRevert.sort((a, b) => applied.indexOf(a) - applied.indexOf(b));
  }
  toRevert.reverse();
  const missing = toRevert.filter((row) => !byName.has(row.name)).map((row) => row.name);
  return {
    steps: missing.length > 0 ? [] : toRevert.map((row) => byName.get(row.name)!),
    missing,
    outOfOrder: [],
    batch,
    blockedBy: scope.kind === 'batch' && !scope.cascade ? blockedBy : [],
  };
}

/** The plan for an intent. */
export function planFor(intent: Intent, local: readonly Migration[], applied: readonly AppliedMigration[]): Plan {
  return intent.direction === 'up' ? planUp(local, applied) : planDown(local, applied, intent.scope);
}

/**
 * How a batch runs, decided before anything is opened: `transaction` when every step may run in
 * one transaction (the batch and its bookkeeping commit together or not at all), `session` when
 * a step declares `transaction: false` (then, as Knex does, each step commits on its own, on one
 * dedicated connection under a session lock).
 */
export type RunMode = 'transaction' | 'session';

export function modeOf(steps: readonly Migration[]): RunMode {
  return steps.every((m) => m.transaction) ? 'transaction' : 'session';
}

function latestBatch(applied: readonly AppliedMigration[]): number {
  return applied.reduce((max, row) => Math.max(max, row.batch), 0);
}
