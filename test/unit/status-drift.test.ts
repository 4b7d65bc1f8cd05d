import { describe, expect, it } from 'vitest';
import { diffLines } from '../../src/cli/render-status.ts';
import { diffObjects, groupByVersion, type Member } from '../../src/migrations/drift.ts';
import type { AppliedVersion } from '../../src/migrations/status.ts';

const plain = (lines: readonly string[]): string[] => lines.map((l) => l.replace(/\u001b\[[0-9;]*m/g, ''));
const V1: AppliedVersion = { digest: 'd1', applied: 1, latest: '001.ts' };
const V2: AppliedVersion = { digest: 'd2', applied: 2, latest: '002.ts' };

function member(n: number, version: AppliedVersion, fingerprint: string): Member {
  return { orgId: `org_${n}`, schema: `tid_${n}`, version, fingerprint };
}

describe('groupByVersion', () => {
  it('takes the fingerprint most tenants share as the majority, the others as outliers, per version', () => {
    const groups = groupByVersion([
      member(1, V2, 'a'),
      member(2, V2, 'b'),
      member(3, V2, 'a'),
      member(4, V1, 'x'),
      member(5, V2, 'a'),
      member(6, V2, 'c'),
      member(7, V2, 'b'),
    ]);
    expect(groups).toHaveLength(2);
    const [v2, v1] = groups;
    expect(v2).toMatchObject({
      version: V2,
      tenants: 6,
      fingerprints: 3,
      tie: false,
      majority: { fingerprint: 'a', tenants: 3, representative: { orgId: 'org_1', schema: 'tid_1' } },
    });
    expect(v2!.outliers.map((o) => [o.fingerprint, o.tenants.map((t) => t.orgId)])).toEqual([
      ['b', ['org_2', 'org_7']],
      ['c', ['org_6']],
    ]);
    expect(v1).toMatchObject({ tenants: 1, fingerprints: 1, outliers: [] });
  });

  it('never compares tenants at different versions', () => {
    const groups = groupByVersion([member(1, V1, 'a'), member(2, V2, 'b')]);
    expect(groups.every((g) => g.outliers.length === 0)).toBe(true);
  });

  it('reports a tie, with the first-seen fingerprint as the majority', () => {
    const [group] = groupByVersion([member(1, V1, 'b'), member(2, V1, 'a')]);
    expect(group).toMatchObject({ tie: true, majority: { fingerprint: 'b' } });
    expect(group!.outliers.map((o) => o.fingerprint)).toEqual(['a']);
  });
});

describe('diffObjects', () => {
  const majority = [
    { key: 'column members.email', definition: 'character varying(255)' },
    { key: 'column members.id', definition: "integer not null default nextval('@.members_id_seq'::regclass)" },
    { key: 'index members_pkey', definition: 'CREATE UNIQUE INDEX members_pkey ON @.members USING btree (id)' },
  ];

  it('names objects only the outlier has, objects it lacks, and objects defined otherwise', () => {
    const outlier = [
      { key: 'column members.email', definition: 'text' },
      { key: 'column members.hotfix', definition: 'integer' },
      majority[1]!,
    ];
    expect(diffObjects(outlier, majority)).toEqual([
      { object: 'column members.email', change: 'changed', outlier: 'text', majority: 'character varying(255)' },
      { object: 'column members.hotfix', change: 'added', outlier: 'integer' },
      { object: 'index members_pkey', change: 'missing', majority: majority[2]!.definition },
    ]);
    expect(diffObjects(majority, majority)).toEqual([]);
  });

  it('renders as short +, - and ~ lines, capped', () => {
    const diff = diffObjects([{ key: 'column members.hotfix', definition: 'integer' }], majority.slice(0, 1));
    expect(plain(diffLines(diff))).toEqual([
      '- column members.email (missing here): character varying(255)',
      '+ column members.hotfix (only here): integer',
    ]);
    const many = Array.from({ length: 30 }, (_, i) => ({ key: `table t${i}`, definition: 'rp' }));
    const lines = plain(diffLines(diffObjects(many, []), 20));
    expect(lines).toHaveLength(21);
    expect(lines.at(-1)).toBe('… and 10 more objects (see --json)');
  });
});
