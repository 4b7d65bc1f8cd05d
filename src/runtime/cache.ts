/**
 * A small least-recently-used map whose entries also expire. Bounded so that a process serving
 * many thousands of tenants keeps only the busy ones; the clock is injected so that tests can
 * move time without sleeping.
 */
export class ExpiringLru<K, V> {
  readonly #max: number;
  readonly #now: () => number;
  readonly #entries = new Map<K, { value: V; expiresAt: number }>();

  constructor(max: number, now: () => number) {
    this.#max = max;
    this.#now = now;
  }

  /** The live value for `key`, marked most recently used; undefined when absent or expired (then dropped). */
  get(key: K): V | undefined {
    const entry = this.#entries.get(key);
    if (entry === undefined) return undefined;
    this.#entries.delete(key);
    if (entry.expiresAt <= this.#now()) return undefined;
    this.#entries.set(key, entry); // Map keeps insertion order: re-inserting marks it most recent
    return entry.value;
  }

  /** Stores `value` for `ttlMs` (Infinity: until evicted), evicting the least recently used beyond the bound. */
  set(key: K, value: V, ttlMs: number): void {
    this.#entries.delete(key);
    this.#entries.set(key, { value, expiresAt: this.#now() + ttlMs });
    while (this.#entries.size > this.#max) {
      const oldest = this.#entries.keys().next();
      if (oldest.done) break;
      this.#entries.delete(oldest.value);
    }
  }

  delete(key: K): void {
    this.#entries.delete(key);
  }

  clear(): void {
    this.#entries.clear();
  }

  get size(): number {
    return this.#entries.size;
  }
}
