import { describe, expect, it } from 'vitest';
import { UsageError } from '../../src/errors.ts';
import { parseAmount, parseWaves, resolveAmount, stopMessage, waveEnds } from '../../src/migrations/waves.ts';

describe('parseAmount', () => {
  it('reads a count or a percentage', () => {
    expect(parseAmount('5', '--canary')).toEqual({ count: 5 });
    expect(parseAmount(' 10% ', '--canary')).toEqual({ percent: 10 });
    expect(parseAmount('0.5%', '--max-failures')).toEqual({ percent: 0.5 });
    expect(parseAmount('100%', '--waves')).toEqual({ percent: 100 });
  });

  it.each(['0', '-1', '1.5', '0%', '101%', 'ten', '', '5 %', '%'])(
    'refuses %j with a UsageError naming the flag',
    (raw) => {
      expect(() => parseAmount(raw, '--max-failures')).toThrow(UsageError);
      expect(() => parseAmount(raw, '--max-failures')).toThrow(/--max-failures/);
    },
  );
});

describe('parseWaves', () => {
  it('reads a comma-separated list', () => {
    expect(parseWaves('1,10%,50%,100%')).toEqual([{ count: 1 }, { percent: 10 }, { percent: 50 }, { percent: 100 }]);
  });

  it('refuses an empty entry', () => {
    expect(() => parseWaves('1,,50%')).toThrow(/--waves/);
  });
});

describe('resolveAmount', () => {
  it('caps a count at the total and rounds a share up to at least one tenant', () => {
    expect(resolveAmount({ count: 5 }, 3)).toBe(3);
    expect(resolveAmount({ percent: 10 }, 1000)).toBe(100);
    expect(resolveAmount({ percent: 10 }, 7)).toBe(1);
    expect(resolveAmount({ percent: 50 }, 5)).toBe(3);
    expect(resolveAmount({ percent: 100 }, 0)).toBe(0);
  });
});

describe('waveEnds', () => {
  it('is one wave without pacing', () => {
    expect(waveEnds(10, 0, [])).toEqual([10]);
  });

  it('puts the canaries first, then the cumulative cut points, then the rest', () => {
    expect(waveEnds(100, 2, [{ percent: 10 }, { percent: 50 }])).toEqual([2, 10, 50, 100]);
    expect(waveEnds(1000, 0, [{ count: 1 }, { percent: 10 }, { percent: 50 }, { percent: 100 }])).toEqual([
      1, 100, 500, 1000,
    ]);
  });

  it('drops cut points that would make an empty wave', () => {
    expect(waveEnds(4, 1, [{ count: 1 }, { percent: 10 }, { percent: 50 }])).toEqual([1, 2, 4]);
    expect(waveEnds(0, 3, [{ percent: 50 }])).toEqual([]);
  });
});

describe('stopMessage', () => {
  it('says what stopped the run', () => {
    expect(stopMessage('canary', 1)).toMatch(/canary failed/);
    expect(stopMessage('max-failures', 1)).toMatch(/--fail-fast/);
    expect(stopMessage('max-failures', 3)).toMatch(/--max-failures 3/);
    expect(stopMessage('wave', 1)).toMatch(/previous wave/);
  });
});
