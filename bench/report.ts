import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Measurement } from './variants/types.ts';

/** Every value of one metric over all runs, summarised. */
export interface Summary {
  readonly metric: string;
  readonly label: string;
  readonly unit: 'ms' | 'kB' | 'rows';
  readonly tenants: number;
  readonly n: number;
  readonly median: number;
  readonly p95: number;
  readonly min: number;
  readonly max: number;
  readonly values: readonly number[];
}

/** A target from the issue, for context: computed and shown, never asserted. */
export interface TargetCheck {
  readonly target: string;
  readonly actual: string;
  readonly met: boolean;
}

const WHOLE = '(whole command)';
const LABELS: Record<string, string> = {
  'migrate.naive': 'migrate — naive loop (Knex per tenant)',
  'migrate.toolkit': `migrate — toolkit migrate:tenants ${WHOLE}`,
  'migrate.floor': 'migrate — floor (raw SQL, pool-size connections)',
  'migrate.dryrun': `dry-run — toolkit migrate:tenants --dry-run ${WHOLE}`,
  'migrate.noguard': `migrate — toolkit, escape guard off ${WHOLE}`,
  'migrate.noledger': `migrate — toolkit, no run ledger ${WHOLE}`,
  'noop.naive': 'no-op rerun — naive loop',
  'noop.toolkit': `no-op rerun — toolkit ${WHOLE}`,
  'noop.toolkit.big': `no-op rerun — toolkit ${WHOLE}`,
  'status.toolkit.big': `migrate:status — toolkit ${WHOLE}`,
  'migrate.toolkit.big': `migrate — toolkit migrate:tenants ${WHOLE}`,
  'startup.cli': `CLI start-up — --help ${WHOLE}`,
  'report.toolkit': `migrate:report — registry only ${WHOLE}`,
  'report.size': 'migrate:report — page size',
  'report.render': 'migrate:report — render in headless Chromium (to load)',
  'servers.one': `migrate — all tenants on one server ${WHOLE}`,
  'servers.many': `migrate — tenants spread over --servers ${WHOLE}`,
  'servers.one.noop': `no-op rerun — all tenants on one server ${WHOLE}`,
  'servers.many.noop': `no-op rerun — tenants spread over --servers ${WHOLE}`,
  'provision.toolkit': 'provision one tenant — provisionTenant',
  'provision.floor': 'provision one tenant — floor (one transaction)',
  'provision.floor.booked': 'provision one tenant — floor with registry + tracking rows',
  'provision.noguard': 'provision one tenant — provisionTenant, ESCAPE_GUARD=off',
  'cpu.migrate.toolkit': 'client CPU — migrate:tenants',
  'cpu.migrate.dryrun': 'client CPU — migrate:tenants --dry-run',
  'cpu.migrate.noguard': 'client CPU — migrate:tenants, escape guard off',
  'cpu.migrate.noledger': 'client CPU — migrate:tenants, no run ledger',
  'cpu.noop.toolkit': 'client CPU — no-op rerun',
  'cpu.noop.toolkit.big': 'client CPU — no-op rerun',
  'cpu.status.toolkit.big': 'client CPU — migrate:status',
  'cpu.migrate.toolkit.big': 'client CPU — migrate:tenants',
  'cpu.startup.cli': 'client CPU — --help',
  'cpu.report.toolkit': 'client CPU — migrate:report',
  'cpu.servers.one': 'client CPU — migrate:tenants, one server',
  'cpu.servers.many': 'client CPU — migrate:tenants, spread over --servers',
  'cpu.servers.one.noop': 'client CPU — no-op rerun, one server',
  'cpu.servers.many.noop': 'client CPU — no-op rerun, spread over --servers',
  'rss.migrate.toolkit': 'peak RSS — migrate:tenants',
  'rss.migrate.toolkit.big': 'peak RSS — migrate:tenants',
  'rss.noop.toolkit.big': 'peak RSS — no-op rerun',
  'rss.status.toolkit.big': 'peak RSS — migrate:status',
  'rss.startup.cli': 'peak RSS — --help',
  'rss.report.toolkit': 'peak RSS — migrate:report',
};
const ORDER = Object.keys(LABELS);

/** Groups measurements by metric (values of all repeats together) in a fixed order. */
export function summarise(measurements: readonly Measurement[]): Summary[] {
  const byMetric = new Map<string, Measurement[]>();
  for (const m of measurements) byMetric.set(m.metric, [...(byMetric.get(m.metric) ?? []), m]);
  const rank = (metric: string): number => (ORDER.includes(metric) ? ORDER.indexOf(metric) : ORDER.length);
  return [...byMetric.entries()]
    .sort(([a], [b]) => rank(a) - rank(b))
    .map(([metric, list]) => {
      const values = list.flatMap((m) => m.values);
      const sorted = [...values].sort((a, b) => a - b);
      return {
        metric,
        label: LABELS[metric] ?? metric,
        unit: list[0]!.unit,
        tenants: list[0]!.tenants,
        n: values.length,
        median: percentile(sorted, 50),
        p95: percentile(sorted, 95),
        min: sorted[0] ?? NaN,
        max: sorted[sorted.length - 1] ?? NaN,
        values,
      };
    });
}

/** Nearest-rank percentile of sorted values (the median of two values is their mean). */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  if (p === 50 && sorted.length % 2 === 0) return (sorted[sorted.length / 2 - 1]! + sorted[sorted.length / 2]!) / 2;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/** The issue's targets, computed from what was measured (missing ones are left out). */
export function checkTargets(summaries: readonly Summary[]): TargetCheck[] {
  const get = (metric: string): Summary | undefined => summaries.find((s) => s.metric === metric);
  const checks: TargetCheck[] = [];
  const toolkit = get('migrate.toolkit');
  const floor = get('migrate.floor');
  const naive = get('migrate.naive');
  if (toolkit && floor) {
    const ratio = toolkit.median / floor.median;
    checks.push({
      target: `migrate:tenants ≤ 1.25× the floor (N=${toolkit.tenants})`,
      actual: `${ratio.toFixed(2)}×`,
      met: ratio <= 1.25,
    });
  }
  if (toolkit && naive) {
    const ratio = naive.median / toolkit.median;
    checks.push({
      target: `migrate:tenants ≥ 4× faster than the naive loop (N=${toolkit.tenants})`,
      actual: `${ratio.toFixed(1)}× faster`,
      met: ratio >= 4,
    });
  }
  for (const [metric, limitMs, what] of [
    ['startup.help', 150, 'tenant-migrate --help'],
    ['startup.status', 400, 'migrate:status on 10 up-to-date tenants'],
  ] as const) {
    const s = get(metric);
    const node = get('startup.node');
    if (s)
      checks.push({
        target: `${what} ≤ ${limitMs} ms (whole process)`,
        actual: `${formatValue(s.median, 'ms')}${node ? ` (node -e 0: ${formatValue(node.median, 'ms')})` : ''}`,
        met: s.median <= limitMs,
      });
  }
  for (const [metric, limitMs] of [
    ['noop.toolkit', 2000],
    ['noop.toolkit.big', 3000],
  ] as const) {
    const s = get(metric);
    if (s)
      checks.push({
        target: `no-op rerun ≤ ${limitMs / 1000} s at ${s.tenants} tenants`,
        actual: formatValue(s.median, 'ms'),
        met: s.median <= limitMs,
      });
  }
  const provToolkit = get('provision.toolkit');
  for (const [metric, what] of [
    ['provision.floor', 'the floor for one tenant'],
    ['provision.floor.booked', 'the floor with registry and tracking rows'],
  ] as const) {
    const floor = get(metric);
    if (!provToolkit || !floor) continue;
    const ratio = provToolkit.median / floor.median;
    checks.push({ target: `provisioning p50 ≤ 1.2× ${what}`, actual: `${ratio.toFixed(2)}×`, met: ratio <= 1.2 });
  }
  // withTenant against the same transaction written by hand in Knex on the same pool (and, for
  // reading, against raw `pg` on a connection of that pool), with and without tenant roles.
  for (const suffix of ['', '.pool'] as const) {
    const knexFloor = get(`runtime.knex${suffix}`);
    const raw = get(`runtime.raw${suffix}`);
    for (const [mode, what] of [
      ['checked', 'withTenant'],
      ['roles', 'withTenant with SET LOCAL ROLE'],
    ] as const) {
      const s = get(`runtime.${mode}${suffix}`);
      if (!s || !knexFloor) continue;
      const ratio = s.median / knexFloor.median;
      const callers = suffix === '' ? 'one caller' : 'pool-size callers';
      checks.push({
        target: `${what} ≤ 1.2× the transaction by hand in Knex (${callers})`,
        actual: `${ratio.toFixed(2)}×${raw ? ` (raw pg: ${(s.median / raw.median).toFixed(2)}×)` : ''}`,
        met: ratio <= 1.2,
      });
    }
  }
  const rssSmall = get('rss.migrate.toolkit');
  const rssBig = get('rss.migrate.toolkit.big');
  if (rssSmall && rssBig) {
    const ratio = rssBig.median / rssSmall.median;
    checks.push({
      target: `peak RSS at ${rssBig.tenants} ≤ 1.5× at ${rssSmall.tenants} tenants`,
      actual: `${ratio.toFixed(2)}×`,
      met: ratio <= 1.5,
    });
  }
  return checks;
}

/** What the `servers` variant compared, for its context lines. */
export interface ServersLayout {
  /** Servers the tenants were spread over, the main one included. */
  readonly servers: number;
  /** Connections per server (DB_POOL_MAX, and `pool_max=` of each extra server). */
  readonly poolMax: number;
  /** CPU cores of the machine running the bench. */
  readonly cores: number;
  /** Every server is on this machine (a loopback address). */
  readonly sameMachine: boolean;
}

/**
 * The speed-up of the fan-out over several servers against one server (ratio of the medians),
 * and the same for the no-op rerun: context lines, never a target, since what it shows depends
 * on where the servers run.
 */
export function serversContext(summaries: readonly Summary[], layout: ServersLayout): string[] {
  const get = (metric: string): Summary | undefined => summaries.find((s) => s.metric === metric);
  const lines: string[] = [];
  const where = layout.sameMachine
    ? `the servers share this machine's ${layout.cores} cores with each other and the bench: the figure shows whether the fan-out puts the extra pools to use, not what ${layout.servers} machines would give`
    : 'the servers are not all on this machine: the figure includes their own hardware and network';
  for (const [what, one, many] of [
    ['fan-out', get('servers.one'), get('servers.many')],
    ['no-op rerun', get('servers.one.noop'), get('servers.many.noop')],
  ] as const) {
    if (!one || !many) continue;
    const ratio = one.median / many.median;
    const speed = ratio >= 1 ? `${ratio.toFixed(2)}× faster than` : `${(1 / ratio).toFixed(2)}× slower than`;
    const figures = `${formatValue(many.median, 'ms')} against ${formatValue(one.median, 'ms')}, medians of ${Math.min(one.n, many.n)} run(s), ${one.tenants} tenants, ${layout.poolMax} connections per server`;
    lines.push(
      `${what} over ${layout.servers} servers: ${speed} one server (${figures}${lines.length === 0 ? `; ${where}` : ''})`,
    );
  }
  return lines;
}

export function formatValue(value: number, unit: 'ms' | 'kB' | 'rows'): string {
  if (!Number.isFinite(value)) return '-';
  if (unit === 'rows') return `${value.toFixed(1)} rows`;
  if (unit === 'kB') return value < 1024 ? `${value.toFixed(0)} kB` : `${(value / 1024).toFixed(0)} MB`;
  if (value < 10) return `${value.toFixed(2)} ms`;
  if (value < 1000) return `${value.toFixed(1)} ms`;
  return `${(value / 1000).toFixed(2)} s`;
}

/** The table printed at the end of a run. */
export function renderTable(
  summaries: readonly Summary[],
  checks: readonly TargetCheck[],
  context: readonly string[] = [],
): string {
  const floor = summaries.find((s) => s.metric === 'migrate.floor');
  const rows = summaries.map((s) => {
    const perTenant =
      s.unit === 'ms' && s.tenants > 1 && !s.metric.startsWith('cpu.') ? formatValue(s.median / s.tenants, 'ms') : '';
    const vsFloor =
      floor && s.metric.startsWith('migrate.') && s.tenants === floor.tenants
        ? `${(s.median / floor.median).toFixed(2)}×`
        : '';
    const spread = s.n > 1 ? `${formatValue(s.min, s.unit)} – ${formatValue(s.max, s.unit)}` : '';
    return [
      s.label,
      s.tenants === 0 ? '-' : String(s.tenants),
      String(s.n),
      formatValue(s.median, s.unit),
      s.n >= 10 ? formatValue(s.p95, s.unit) : '',
      spread,
      perTenant,
      vsFloor,
    ];
  });
  const lines = [
    columns(['measurement', 'tenants', 'runs', 'median', 'p95', 'min – max', 'per tenant', 'vs floor'], rows),
  ];
  if (context.length > 0) {
    lines.push('', 'Context (not a target):');
    for (const line of context) lines.push(`  ${line}`);
  }
  if (checks.length > 0) {
    lines.push('', 'Targets (context only, not asserted):');
    for (const c of checks) lines.push(`  ${c.met ? 'met   ' : 'MISSED'}  ${c.target}: ${c.actual}`);
  }
  return lines.join('\n');
}

function columns(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

/** Writes the JSON document (creating its folder) and returns its path. */
export function writeJson(file: string, document: unknown): string {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, `${JSON.stringify(document, null, 2)}\n`);
  return file;
}
