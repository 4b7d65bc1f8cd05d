import { describe, expect, it } from 'vitest';
import { candidateSchemaNames, digestOf, schemaNameFor } from '../../src/index.ts';
import type { Migration } from '../../src/migrations/source.ts';
import { type AdoptionFacts, derivedSchema, planAdoption } from '../../src/tenants/adopt.ts';

const local = ['001_a.ts', '002_b.ts'].map(
  (name): Migration => ({ name, file: name, checksum: name, transaction: true, up: () => undefined, down: undefined }),
);
const tracked = (...names: string[]) => ({
  exists: true,
  tracked: true,
  applied: names.map((name) => ({ name, batch: 1 })),
});

function facts(partial: Partial<AdoptionFacts>): AdoptionFacts {
  return { schemas: new Set(), registry: [], states: new Map(), ...partial };
}

describe('planAdoption', () => {
  const a = schemaNameFor('org_a');

  it('adopts a tracked schema with the digest of its applied names, and lists files it lacks', () => {
    const plan = planAdoption(
      ['org_a'],
      facts({ schemas: new Set([a]), states: new Map([[a, tracked('001_a.ts', '000_gone.ts')]]) }),
      local,
    );
    expect(plan.adopted).toEqual([
      {
        orgId: 'org_a',
        schema: a,
        applied: 2,
        digest: digestOf(['000_gone.ts', '001_a.ts']),
        notInFolder: ['000_gone.ts'],
      },
    ]);
    expect(plan.unmatched).toEqual([]);
  });

  it('adopts an empty tracking table with the digest of the empty set', () => {
    const plan = planAdoption(['org_a'], facts({ schemas: new Set([a]), states: new Map([[a, tracked()]]) }), local);
    expect(plan.adopted[0]).toMatchObject({ applied: 0, digest: digestOf([]) });
  });

  it('sorts out registered, missing, taken, untracked and unmatched', () => {
    const [b, c, d, ghost] = ['org_b', 'org_c', 'org_d', 'org_ghost'].map((o) => schemaNameFor(o)) as string[];
    const plan = planAdoption(
      ['org_a', 'org_b', 'org_c', 'org_d', 'org_e'],
      facts({
        schemas: new Set([a, b!, c!, d!, ghost!]),
        registry: [
          { orgId: 'org_a', schema: a },
          { orgId: 'org_other', schema: c! },
        ],
        states: new Map([
          [b!, tracked('001_a.ts')],
          [c!, tracked('001_a.ts')],
          [d!, { exists: true, tracked: false, applied: [] }],
        ]),
      }),
      local,
    );
    expect(plan.given).toBe(5);
    expect(plan.adopted.map((t) => t.orgId)).toEqual(['org_b']);
    expect(plan.alreadyRegistered).toEqual([{ orgId: 'org_a', schema: a }]);
    expect(plan.refused).toEqual([
      { orgId: 'org_c', schema: c, reason: 'schema-registered', otherOrgId: 'org_other' },
      { orgId: 'org_d', schema: d, reason: 'not-tracked' },
    ]);
    expect(plan.notFound).toEqual([{ orgId: 'org_e', schema: schemaNameFor('org_e') }]);
    expect(plan.unmatched).toEqual([ghost]);
  });

  it('gives a schema two org ids derive to (a hash collision) to the first, and refuses the second', () => {
    // Found by search: the first 10 hex digits of their md5 are equal (ae7d4c36b0).
    const [first, second] = ['org_866543', 'org_1785301'];
    const schema = schemaNameFor(first);
    expect(schemaNameFor(second)).toBe(schema);
    const plan = planAdoption(
      [first, second],
      facts({ schemas: new Set([schema]), states: new Map([[schema, tracked('001_a.ts')]]) }),
      local,
    );
    expect(plan.adopted.map((t) => t.orgId)).toEqual([first]);
    expect(plan.refused).toEqual([{ orgId: second, schema, reason: 'schema-claimed', otherOrgId: first }]);
  });

  it('derives the first existing candidate name (a longer one after a collision), else the 10-digit one', () => {
    const [ten, twelve] = candidateSchemaNames('org_a') as [string, string];
    expect(derivedSchema('org_a', new Set())).toBe(ten);
    expect(derivedSchema('org_a', new Set([twelve]))).toBe(twelve);
    expect(derivedSchema('org_a', new Set([ten, twelve]))).toBe(ten);
  });
});
