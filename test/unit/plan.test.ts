import { describe, expect, it } from 'vitest';
import { formatDuration } from '../../src/cli/render.ts';
import { appliedAfter, modeOf, planDown, planFor, planUp, UP } from '../../src/migrations/plan.ts';
import type { Migration } from '../../src/migrations/source.ts';

// Planning is pure: which migrations a run applies or reverts, from the files and the tracking rows.

function migration(name: string, transaction = true): Migration {
  return { name, file: `/m/${name}`, checksum: name, transaction, up: () => undefined, down: () => undefined };
}

const FILES = ['001_a.ts', '002_b.ts', '003_c.ts', '004_d.ts'].map((n) => migration(n));
const applied = (...rows: [string, number][]) => rows.map(([name, batch]) => ({ name, batch }));

describe('planUp', () => {
  it('applies the pending files in name order, as the next batch', () => {
    const plan = planUp(FILES, applied(['001_a.ts', 1], ['002_b.ts', 2]));
    expect(plan.steps.map((m) => m.name)).toEqual(['003_c.ts', '004_d.ts']);
    expect(plan.batch).toBe(3);
    expect(plan.missing).toEqual([]);
    expect(plan.outOfOrder).toEqual([]);
  });

  it('is batch 1 on a fresh schema, and nothing to do when all are applied', () => {
    expect(planUp(FILES, []).batch).toBe(1);
    const done = planUp(FILES, applied(['001_a.ts', 1], ['002_b.ts', 1], ['003_c.ts', 1], ['004_d.ts', 1]));
    expect(done.steps).toEqual([]);
  });

  it('names applied migrations whose file is gone, and pending files older than the newest applied', () => {
    const plan = planUp(FILES.slice(1), applied(['001_a.ts', 1], ['003_c.ts', 1]));
    expect(plan.missing).toEqual(['001_a.ts']);
    expect(plan.outOfOrder).toEqual(['002_b.ts']);
  });
});

describe('planDown', () => {
  const rows = applied(['001_a.ts', 1], ['002_b.ts', 1], ['003_c.ts', 2], ['004_d.ts', 3]);

  it('last-batch: the latest batch, newest first', () => {
    const plan = planDown(FILES, rows, { kind: 'last-batch' });
    expect(plan.steps.map((m) => m.name)).toEqual(['004_d.ts']);
    expect(plan.batch).toBe(3);
  });

  it('all: every batch, newest first', () => {
    expect(planDown(FILES, rows, { kind: 'all' }).steps.map((m) => m.name)).toEqual([
      '004_d.ts',
      '003_c.ts',
      '002_b.ts',
      '001_a.ts',
    ]);
  });

  it('batch: exactly the named migrations of that batch; refused when a later batch sits on top', () => {
    const scope = { kind: 'batch', batch: 2, names: ['003_c.ts'], cascade: false } as const;
    const blocked = planDown(FILES, rows, scope);
    expect(blocked.steps).toEqual([]);
    expect(blocked.blockedBy).toEqual([3]);
    const cascade = planDown(FILES, rows, { ...scope, cascade: true });
    expect(cascade.steps.map((m) => m.name)).toEqual(['004_d.ts', '003_c.ts']);
    expect(cascade.blockedBy).toEqual([]);
  });

  it('batch: a second rollback of the same run finds nothing (the names are no longer applied)', () => {
    const after = applied(['001_a.ts', 1], ['002_b.ts', 1]);
    const plan = planDown(FILES, after, { kind: 'batch', batch: 2, names: ['003_c.ts'], cascade: false });
    expect(plan.steps).toEqual([]);
    expect(plan.blockedBy).toEqual([]);
  });

  it('refuses to revert a migration whose file is gone', () => {
    const plan = planDown(FILES.slice(0, 3), rows, { kind: 'last-batch' });
    expect(plan.missing).toEqual(['004_d.ts']);
    expect(plan.steps).toEqual([]);
  });
});

describe('planFor, appliedAfter and modeOf', () => {
  it('planFor follows the intent', () => {
    expect(planFor(UP, FILES, []).steps).toHaveLength(4);
    const down = planFor({ direction: 'down', scope: { kind: 'all' } }, FILES, applied(['001_a.ts', 1]));
    expect(down.steps.map((m) => m.name)).toEqual(['001_a.ts']);
  });

  it('appliedAfter adds going up and removes going down', () => {
    const rows = applied(['001_a.ts', 1], ['002_b.ts', 1]);
    expect(appliedAfter(rows, ['003_c.ts'], 'up').sort()).toEqual(['001_a.ts', '002_b.ts', '003_c.ts']);
    expect(appliedAfter(rows, ['002_b.ts'], 'down')).toEqual(['001_a.ts']);
  });

  it('modeOf is session as soon as one step declares transaction: false', () => {
    expect(modeOf(FILES)).toBe('transaction');
    expect(modeOf([...FILES, migration('005_e.ts', false)])).toBe('session');
    expect(modeOf([])).toBe('transaction');
  });
});

describe('formatDuration', () => {
  it('shows milliseconds below a second and seconds above', () => {
    expect(formatDuration(120)).toBe('120 ms');
    expect(formatDuration(999)).toBe('999 ms');
    expect(formatDuration(3400)).toBe('3.4 s');
  });
});
