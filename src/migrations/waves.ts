import { UsageError } from '../errors.ts';

/**
 * Deploy pacing: canaries, waves and the failure budget. Pure functions over counts, no
 * database; unit-tested in test/unit/waves.test.ts.
 */

/** A number of tenants, or a share of the tenants the run has work for. */
export type Amount = { readonly count: number } | { readonly percent: number };

/** Parses `5` or `10%` (what `--canary`, `--max-failures` and each `--waves` entry take). */
export function parseAmount(raw: string, flag: string): Amount {
  const text = raw.trim();
  const percent = /^(\d+(?:\.\d+)?)%$/.exec(text);
  if (percent) {
    const value = Number(percent[1]);
    if (value > 0 && value <= 100) return { percent: value };
  } else if (/^\d+$/.test(text) && Number(text) >= 1) {
    return { count: Number(text) };
  }
  throw new UsageError(
    `${flag} takes a whole number of tenants (at least 1) or a percentage such as 10%, got "${raw}"`,
  );
}

/** `1,10%,50%,100%`: each entry is where a wave ends, counted from the start (cumulative). */
export function parseWaves(raw: string): Amount[] {
  const parts = raw.split(',').map((part) => part.trim());
  if (parts.length === 0 || parts.some((part) => part === '')) {
    throw new UsageError(`--waves takes a comma-separated list such as 1,10%,50%,100%, got "${raw}"`);
  }
  return parts.map((part) => parseAmount(part, '--waves'));
}

/** How many tenants an amount is, out of `total` (a share is rounded up: at least one tenant). */
export function resolveAmount(amount: Amount, total: number): number {
  if ('count' in amount) return Math.min(amount.count, total);
  return Math.min(total, Math.max(1, Math.ceil((amount.percent / 100) * total)));
}

/**
 * Where each wave ends in a queue of `total` tenants: the canary wave first (when there is one),
 * then the `waves` cut points, then the rest. Strictly increasing, the last one `total`.
 */
export function waveEnds(total: number, canary: number, waves: readonly Amount[]): number[] {
  const ends: number[] = [];
  const push = (end: number): void => {
    if (end > (ends.at(-1) ?? 0)) ends.push(end);
  };
  if (canary > 0) push(Math.min(canary, total));
  for (const wave of waves) push(resolveAmount(wave, total));
  push(total);
  return ends;
}

/** Shown in the skipped tenants' reason and the summary: what stopped the run. */
export type StopReason = 'canary' | 'wave' | 'max-failures';

export function stopMessage(reason: StopReason, budget: number): string {
  if (reason === 'canary') return 'not started: a canary failed';
  if (reason === 'wave') return 'not started: a tenant of the previous wave failed';
  return budget === 1
    ? 'not started: the run stopped after a failure (--fail-fast / --max-failures 1)'
    : `not started: the failure budget (--max-failures ${budget}) was spent`;
}
