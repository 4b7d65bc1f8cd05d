import { describe, expect, it } from 'vitest';
import { cut, groupByState, HIDE_ABOVE, summaryLine, tenantCells, tenantLines } from '../../src/cli/render-status.ts';
import type { TenantState, TenantStatusRow } from '../../src/migrations/status.ts';

const plain = (lines: readonly string[]): string[] => lines.map((l) => l.replace(/\u001b\[[0-9;]*m/g, ''));

function row(orgId: string, state: TenantState, pending: readonly string[] = [], error: string | null = null) {
  return {
    orgId,
    schema: `tid_${orgId}`,
    status: 'ACTIVE',
    state,
    applied: 2,
    pending,
    missing: [],
    error,
  } satisfies TenantStatusRow;
}

const PENDING = Array.from(
  { length: 40 },
  (_, i) => `2026010100${String(i).padStart(4, '0')}_a_long_migration_name.ts`,
);

describe('tenantCells', () => {
  it('shows the pending count and the first pending name, never the whole list', () => {
    expect(plain(tenantCells(row('a', 'behind', PENDING)))).toEqual([
      'a',
      'tid_a',
      'ACTIVE',
      '2',
      '40',
      PENDING[0],
      'behind',
      '',
    ]);
    expect(plain(tenantCells(row('b', 'up-to-date'))).slice(4, 6)).toEqual(['0', '-']);
  });

  it('cuts a long error to one line unless long', () => {
    const error = `${'x'.repeat(300)}\nsecond line`;
    const short = tenantCells(row('a', 'failed', [], error)).at(-1)!;
    expect(short.length).toBeLessThanOrEqual(240);
    expect(short.endsWith('…')).toBe(true);
    expect(tenantCells(row('a', 'failed', [], error), { long: true }).at(-1)).toBe(error);
  });

  it('names missing files when there is no error', () => {
    const r = { ...row('a', 'failed'), missing: ['009_gone.ts'] };
    expect(tenantCells(r).at(-1)).toBe('missing files: 009_gone.ts');
  });
});

describe('tenantLines', () => {
  const fleet = (n: number): TenantStatusRow[] =>
    Array.from({ length: n }, (_, i) =>
      i === 3
        ? row(`t${i}`, 'failed', [], 'boom')
        : i % 10 === 0
          ? row(`t${i}`, 'behind', PENDING)
          : row(`t${i}`, 'up-to-date'),
    );

  it('groups rows by state, worst first, each group in registry order, under one header', () => {
    const out = plain(tenantLines(fleet(12)));
    expect(out[0]).toMatch(/^ORG ID\s+SCHEMA\s+STATUS\s+APPLIED\s+PENDING\s+NEXT\s+STATE\s+ERROR$/);
    const headings = out.filter((l) => l.startsWith('-- '));
    expect(headings).toEqual(['-- failed (1)', '-- behind (2)', '-- up to date (9)']);
    const behind = out.indexOf('-- behind (2)');
    expect(out[behind + 1]).toMatch(/^t0 /);
    expect(out[behind + 2]).toMatch(/^t10 /);
    // At most HIDE_ABOVE tenants, nothing is hidden.
    expect(out.filter((l) => /^t\d+ /.test(l))).toHaveLength(12);
  });

  it(`hides up-to-date rows above ${HIDE_ABOVE} tenants and says how many; all shows them`, () => {
    const tenants = fleet(HIDE_ABOVE + 1);
    const out = plain(tenantLines(tenants));
    const upToDate = tenants.filter((t) => t.state === 'up-to-date').length;
    expect(out.filter((l) => /^t\d+ /.test(l))).toHaveLength(tenants.length - upToDate);
    expect(out.at(-1)).toBe(`${upToDate} up-to-date tenants not shown (--all lists every tenant)`);
    const all = plain(tenantLines(tenants, { all: true }));
    expect(all.filter((l) => /^t\d+ /.test(l))).toHaveLength(tenants.length);
    expect(all.join('\n')).not.toContain('not shown');
  });

  it('keeps lines short with many pending migrations; long lists them all under the row', () => {
    const out = plain(tenantLines(fleet(12)));
    expect(Math.max(...out.map((l) => l.length))).toBeLessThan(140);
    const long = plain(tenantLines(fleet(12), { long: true }));
    const at = long.findIndex((l) => l.startsWith('t0 '));
    expect(long[at + 1]).toBe(`    pending: ${PENDING.join(', ')}`);
  });

  it('says when there are no tenants', () => {
    expect(plain(tenantLines([]))).toEqual(['No tenants registered']);
  });
});

describe('groupByState and summaryLine', () => {
  it('groups in registry order', () => {
    const groups = groupByState([row('a', 'behind'), row('b', 'up-to-date'), row('c', 'behind')]);
    expect(groups.get('behind')?.map((t) => t.orgId)).toEqual(['a', 'c']);
    expect(groups.get('failed')).toBeUndefined();
  });

  it('names the rare states only when present', () => {
    const summary = { 'up-to-date': 3, behind: 1, failed: 0, 'schema-missing': 0, 'not-active': 2, total: 6 };
    expect(summaryLine({ summary, orphans: [] })).toBe('3 up to date, 1 behind, 0 failed, 2 not active');
    expect(summaryLine({ summary: { ...summary, 'not-active': 0 }, orphans: ['tid_x'] })).toBe(
      '3 up to date, 1 behind, 0 failed, 1 orphan schema',
    );
  });

  it('cut marks the cut', () => {
    expect(cut('abcdef', 4)).toBe('abc…');
    expect(cut('abc', 4)).toBe('abc');
  });
});

describe('writeJson', () => {
  it('writes exactly what JSON.stringify(value, null, 2) writes, the tenants one at a time', async () => {
    const { PassThrough } = await import('node:stream');
    const { writeJson } = await import('../../src/cli/render-status.ts');
    const many = Array.from({ length: 3000 }, (_, i) => row(`t${i}`, 'behind', ['001_a.ts', 'quote"\nnewline']));
    for (const value of [
      { command: 'migrate:status', master: { applied: [], pending: ['x'] }, tenants: many, gone: undefined, n: 1 },
      { command: 'migrate:status', tenants: [], orphans: [] },
      {},
    ]) {
      const stream = new PassThrough();
      let out = '';
      stream.on('data', (d) => (out += d));
      await writeJson(stream, value, 'tenants');
      expect(out).toBe(`${JSON.stringify(value, null, 2)}\n`);
    }
  });
});
