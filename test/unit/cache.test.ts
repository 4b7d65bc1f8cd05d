import { describe, expect, it } from 'vitest';
import { ExpiringLru } from '../../src/runtime/cache.ts';

/** A cache with a clock the test moves by hand. */
function cacheWithClock(max: number) {
  const clock = { now: 1_000 };
  const cache = new ExpiringLru<string, string>(max, () => clock.now);
  return { cache, clock };
}

describe('ExpiringLru', () => {
  it('returns undefined for a key never set', () => {
    const { cache } = cacheWithClock(3);
    expect(cache.get('absent')).toBeUndefined();
    expect(cache.size).toBe(0);
  });

  it('returns a value until its ttl has passed, measured from when it was set', () => {
    const { cache, clock } = cacheWithClock(3);
    cache.set('a', 'A', 100);
    clock.now += 99;
    expect(cache.get('a')).toBe('A');
    clock.now += 1;
    expect(cache.get('a')).toBeUndefined();
  });

  it('drops an entry found expired', () => {
    const { cache, clock } = cacheWithClock(3);
    cache.set('a', 'A', 10);
    cache.set('b', 'B', 1_000);
    clock.now += 10;
    expect(cache.get('a')).toBeUndefined();
    expect(cache.size).toBe(1);
    expect(cache.get('b')).toBe('B');
  });

  it('treats a ttl of 0 as already expired', () => {
    const { cache } = cacheWithClock(3);
    cache.set('a', 'A', 0);
    expect(cache.get('a')).toBeUndefined();
  });

  it('keeps an Infinity ttl entry however far the clock moves', () => {
    const { cache, clock } = cacheWithClock(3);
    cache.set('a', 'A', Number.POSITIVE_INFINITY);
    clock.now = Number.MAX_SAFE_INTEGER;
    expect(cache.get('a')).toBe('A');
    clock.now = Number.MAX_VALUE;
    expect(cache.get('a')).toBe('A');
  });

  it('setting a key again replaces its value and restarts its ttl', () => {
    const { cache, clock } = cacheWithClock(3);
    cache.set('a', 'old', 100);
    clock.now += 80;
    cache.set('a', 'new', 100);
    expect(cache.size).toBe(1);
    clock.now += 80;
    expect(cache.get('a')).toBe('new');
    clock.now += 20;
    expect(cache.get('a')).toBeUndefined();
  });

  it('evicts the least recently set entry beyond max', () => {
    const { cache } = cacheWithClock(2);
    cache.set('a', 'A', Number.POSITIVE_INFINITY);
    cache.set('b', 'B', Number.POSITIVE_INFINITY);
    cache.set('c', 'C', Number.POSITIVE_INFINITY);
    expect(cache.size).toBe(2);
    expect(cache.get('a')).toBeUndefined();
    expect(cache.get('b')).toBe('B');
    expect(cache.get('c')).toBe('C');
  });

  it('a get marks the entry most recently used, so another one is evicted', () => {
    const { cache } = cacheWithClock(2);
    cache.set('a', 'A', Number.POSITIVE_INFINITY);
    cache.set('b', 'B', Number.POSITIVE_INFINITY);
    expect(cache.get('a')).toBe('A');
    cache.set('c', 'C', Number.POSITIVE_INFINITY);
    expect(cache.get('b')).toBeUndefined();
    expect(cache.get('a')).toBe('A');
    expect(cache.get('c')).toBe('C');
  });

  it('setting an existing key marks it most recently used', () => {
    const { cache } = cacheWithClock(2);
    cache.set('a', 'A', Number.POSITIVE_INFINITY);
    cache.set('b', 'B', Number.POSITIVE_INFINITY);
    cache.set('a', 'A2', Number.POSITIVE_INFINITY);
    cache.set('c', 'C', Number.POSITIVE_INFINITY);
    expect(cache.get('b')).toBeUndefined();
    expect(cache.get('a')).toBe('A2');
  });

  it('never holds more than max entries', () => {
    const { cache } = cacheWithClock(5);
    for (let i = 0; i < 50; i++) {
      cache.set(`k${i}`, `v${i}`, Number.POSITIVE_INFINITY);
      expect(cache.size).toBe(Math.min(i + 1, 5));
    }
    for (let i = 0; i < 45; i++) expect(cache.get(`k${i}`)).toBeUndefined();
    for (let i = 45; i < 50; i++) expect(cache.get(`k${i}`)).toBe(`v${i}`);
  });

  it('delete removes one entry', () => {
    const { cache } = cacheWithClock(3);
    cache.set('a', 'A', Number.POSITIVE_INFINITY);
    cache.set('b', 'B', Number.POSITIVE_INFINITY);
    cache.delete('a');
    cache.delete('never-set');
    expect(cache.size).toBe(1);
    expect(cache.get('a')).toBeUndefined();
    expect(cache.get('b')).toBe('B');
  });

  it('clear empties it, and it works afterwards', () => {
    const { cache } = cacheWithClock(3);
    cache.set('a', 'A', Number.POSITIVE_INFINITY);
    cache.set('b', 'B', 100);
    cache.clear();
    expect(cache.size).toBe(0);
    expect(cache.get('a')).toBeUndefined();
    expect(cache.get('b')).toBeUndefined();
    cache.set('a', 'A again', 100);
    expect(cache.get('a')).toBe('A again');
  });

  it('caches falsy values as values', () => {
    const clock = { now: 0 };
    const cache = new ExpiringLru<string, number | null>(3, () => clock.now);
    cache.set('zero', 0, 100);
    cache.set('null', null, 100);
    expect(cache.get('zero')).toBe(0);
    expect(cache.get('null')).toBeNull();
  });
});
