import { describe, expect, it } from 'vitest';
import { digestOf, folderDigest } from '../../src/migrations/plan.ts';
import type { Migration } from '../../src/migrations/source.ts';
import { knownPositions } from '../../src/migrations/status.ts';

const folder = ['001_a.ts', '002_b.ts', '003_c.ts'].map((name) => ({ name }) as Migration);

describe('knownPositions', () => {
  it('maps the digest of each prefix of the folder to its length', () => {
    const positions = knownPositions(folder);
    expect(positions.get(digestOf([]))).toBe(0);
    expect(positions.get(digestOf(['001_a.ts']))).toBe(1);
    expect(positions.get(digestOf(['002_b.ts', '001_a.ts']))).toBe(2);
    expect(positions.get(folderDigest(folder))).toBe(3);
    expect(positions.size).toBe(4);
  });

  it('does not place a set that is not a prefix (a gap, or a file the folder lacks)', () => {
    const positions = knownPositions(folder);
    expect(positions.has(digestOf(['001_a.ts', '003_c.ts']))).toBe(false);
    expect(positions.has(digestOf(['001_a.ts', '002_b.ts', '003_c.ts', '004_gone.ts']))).toBe(false);
  });
});
