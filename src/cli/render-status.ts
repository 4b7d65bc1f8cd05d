import { once } from 'node:events';
import pc from 'picocolors';
import type { RunSummary } from '../ledger/history.ts';
import type { DriftGroup, DriftReport, ObjectDiff } from '../migrations/drift.ts';
import type { StatusReport, TenantState, TenantStatusRow } from '../migrations/status.ts';
import type { Toolkit } from '../toolkit.ts';
import { plural, type Renderer, table } from './render.ts';

/**
 * The status report as people read it: master history, then one row per tenant (the count of
 * pending migrations and the first one, not every name), grouped by state, worst first. Above
 * `HIDE_ABOVE` tenants, up-to-date rows are left out unless asked (`all`). `--json` keeps
 * everything: it is the report itself.
 */

type StatusWithLedger = Awaited<ReturnType<Toolkit['status']>>;

export interface StatusView {
  /** Every tenant's row, even above `HIDE_ABOVE` tenants. */
  readonly all?: boolean;
  /** Every pending (and missing) name and whole errors, on lines under each row. */
  readonly long?: boolean;
}

/** Above this many tenants, up-to-date rows are hidden (and counted) unless `all`. */
export const HIDE_ABOVE = 50;
/** Errors longer than this are cut in the table (`long` shows them whole). */
const ERROR_WIDTH = 240;
/** Tenants named per outlier fingerprint, and objects listed per diff, in the drift section. */
const DRIFT_TENANTS = 20;
const DRIFT_OBJECTS = 20;

/** Worst first: the order of the groups. */
export const STATE_ORDER: readonly TenantState[] = [
  'failed',
  'unreachable',
  'schema-missing',
  'behind',
  'not-active',
  'up-to-date',
];

export function statusRenderer(view: StatusView = {}): Renderer<StatusReport | StatusWithLedger> {
  return {
    json: (report) => ({ command: 'migrate:status', ...report }),
    text: (report) => statusText(report, view),
  };
}

/** The default view (what `migrate:status` prints with no flags). */
export const statusReport = statusRenderer();

/**
 * Writes `value` as `JSON.stringify(value, null, 2)` would, plus a newline, with the array under
 * `streamed` written one element at a time (waiting for the stream to drain), so that a fleet's
 * document is never one string in memory.
 */
export async function writeJson(
  stream: NodeJS.WritableStream,
  value: Readonly<Record<string, unknown>>,
  streamed: string,
): Promise<void> {
  let buffer = '';
  const put = async (text: string): Promise<void> => {
    buffer += text;
    if (buffer.length < 1 << 16) return;
    const full = !stream.write(buffer);
    buffer = '';
    if (full) await once(stream, 'drain');
  };
  const nested = (v: unknown, indent: string): string => JSON.stringify(v, null, 2).replace(/\n/g, `\n${indent}`);
  // JSON.stringify leaves out undefined (and function) members.
  const entries = Object.entries(value).filter(([, v]) => v !== undefined && typeof v !== 'function');
  await put(entries.length === 0 ? '{}' : '{\n');
  for (const [i, [key, v]] of entries.entries()) {
    await put(`  ${JSON.stringify(key)}: `);
    if (key === streamed && Array.isArray(v) && v.length > 0) {
      await put('[\n');
      for (const [j, item] of v.entries()) await put(`    ${nested(item, '    ')}${j < v.length - 1 ? ',' : ''}\n`);
      await put('  ]');
    } else await put(nested(v, '  '));
    await put(i < entries.length - 1 ? ',\n' : '\n}');
  }
  await put('\n');
  if (buffer.length > 0 && !stream.write(buffer)) await once(stream, 'drain');
}

function statusText(report: StatusReport | StatusWithLedger, view: StatusView): string[] {
  const lines = [pc.bold('Master migrations (public.knex_migrations_master)')];
  for (const m of report.master.applied) lines.push(`  ${pc.green('applied')}  batch ${m.batch}  ${m.name}`);
  for (const name of report.master.pending) lines.push(`  ${pc.yellow('pending')}           ${name}`);
  for (const name of report.master.missing) lines.push(`  ${pc.red('missing')}           ${name} (applied, file gone)`);
  if (!report.registryExists) return [...lines, pc.yellow('No tenant registry yet: run `pnpm migrate:master`')];
  lines.push('', pc.bold('Tenants'), ...tenantLines(report.tenants, view));
  for (const orphan of report.orphans) lines.push(pc.yellow(`orphan schema ${orphan}: no registry row claims it`));
  for (const down of report.unreachable ?? []) lines.push(pc.yellow(`warning: ${down.message}`));
  if (report.source === 'digest' && report.trusted > 0) {
    lines.push(
      pc.dim(
        `${plural(report.trusted, 'tenant')} placed by the registry digest, without reading their tracking table ` +
          '(--verify reads every one)',
      ),
    );
  }
  const drift = 'drift' in report ? report.drift : undefined;
  if (drift) lines.push('', ...driftLines(drift));
  lines.push('');
  const ledger = 'ledger' in report ? report.ledger : null;
  if (ledger?.lastRun) lines.push(`Last run: ${runLine(ledger.lastRun)}`);
  for (const run of ledger?.interrupted ?? []) {
    lines.push(pc.yellow(`Interrupted: ${runLine(run)} (migrate again to finish it)`));
  }
  lines.push(summaryLine(report));
  return lines;
}

/** `3 up to date, 1 behind, 0 failed`, then the rarer states only when present. */
export function summaryLine(report: Pick<StatusReport, 'summary' | 'orphans'>): string {
  const s = report.summary;
  const parts = [`${s['up-to-date']} up to date`, `${s.behind} behind`, `${s.failed} failed`];
  if ((s.unreachable ?? 0) > 0) parts.push(`${s.unreachable} unreachable`);
  if (s['schema-missing'] > 0) parts.push(`${s['schema-missing']} with a missing schema`);
  if (s['not-active'] > 0) parts.push(`${s['not-active']} not active`);
  if (report.orphans.length > 0) parts.push(plural(report.orphans.length, 'orphan schema'));
  return parts.join(', ');
}

/**
 * The tenant table: one header, then per state (worst first) a heading and its rows. Pure
 * (colour aside), so that row formatting, grouping and hiding are unit-tested.
 */
export function tenantLines(tenants: readonly TenantStatusRow[], view: StatusView = {}): string[] {
  if (tenants.length === 0) return [pc.dim('No tenants registered')];
  const hideUpToDate = !view.all && tenants.length > HIDE_ABOVE;
  const groups = groupByState(tenants);
  const shown = STATE_ORDER.filter((state) => !(hideUpToDate && state === 'up-to-date'));
  const rows = shown.flatMap((state) => groups.get(state) ?? []);
  const lines: string[] = [];
  // Citus mode: the rows name each tenant's node, shown after its schema; tenants on several
  // servers: each tenant's server, there too.
  const nodes = rows.some((t) => t.node !== undefined);
  const servers = rows.some((t) => t.server !== undefined);
  if (rows.length > 0) {
    const headers = ['ORG ID', 'SCHEMA', 'STATUS', 'APPLIED', 'PENDING', 'NEXT', 'STATE', 'ERROR'];
    const cells = (t: TenantStatusRow): string[] => {
      const base = nodes ? withNode(tenantCells(t, view), t.node ?? '-') : tenantCells(t, view);
      return servers ? withNode(base, t.server ?? '-') : base;
    };
    const named = nodes ? withNode(headers, 'NODE') : headers;
    const [header, ...body] = table(servers ? withNode(named, 'SERVER') : named, rows.map(cells));
    lines.push(header!);
    let at = 0;
    for (const state of shown) {
      const members = groups.get(state) ?? [];
      if (members.length === 0) continue;
      lines.push(pc.bold(`-- ${stateLabel(state)} (${members.length})`));
      for (const t of members) {
        lines.push(body[at++]!);
        if (view.long) lines.push(...longLines(t));
      }
    }
  }
  const hidden = hideUpToDate ? (groups.get('up-to-date')?.length ?? 0) : 0;
  if (hidden > 0) {
    lines.push(pc.dim(`${plural(hidden, 'up-to-date tenant')} not shown (--all lists every tenant)`));
  }
  return lines;
}

/** Tenants by state, each group in registry order. */
export function groupByState(tenants: readonly TenantStatusRow[]): Map<TenantState, TenantStatusRow[]> {
  const groups = new Map<TenantState, TenantStatusRow[]>();
  for (const t of tenants) {
    const list = groups.get(t.state);
    if (list) list.push(t);
    else groups.set(t.state, [t]);
  }
  return groups;
}

/** One tenant's cells: the pending count and the first pending name, never the whole list. */
export function tenantCells(t: TenantStatusRow, view: StatusView = {}): string[] {
  const error = t.error ?? (t.missing.length > 0 ? `missing files: ${t.missing.join(', ')}` : '');
  return [
    t.orgId,
    t.schema,
    t.status,
    String(t.applied),
    String(t.pending.length),
    t.pending[0] ?? '-',
    colourState(t.state),
    view.long ? error : cut(firstLine(error), ERROR_WIDTH),
  ];
}

/** The cells with the node's (or the server's) after the schema's. */
function withNode(cells: readonly string[], node: string): string[] {
  return [...cells.slice(0, 2), node, ...cells.slice(2)];
}

/** `--long`: every pending name under its row. */
function longLines(t: TenantStatusRow): string[] {
  return t.pending.length > 1 ? [pc.dim(`    pending: ${t.pending.join(', ')}`)] : [];
}

function stateLabel(state: TenantState): string {
  return state === 'up-to-date' ? 'up to date' : state === 'schema-missing' ? 'schema missing' : state;
}

function colourState(state: TenantState): string {
  return state === 'up-to-date' ? pc.green(state) : state === 'behind' ? pc.yellow(state) : pc.red(state);
}

function firstLine(text: string): string {
  const end = text.indexOf('\n');
  return end < 0 ? text : `${text.slice(0, end)} …`;
}

/** `text` cut to `width` characters, an ellipsis marking the cut. */
export function cut(text: string, width: number): string {
  return text.length <= width ? text : `${text.slice(0, width - 1)}…`;
}

function runLine(run: RunSummary): string {
  const c = run.counts;
  const what = `${c.migrated} migrated, ${c.failed} failed, ${c.skipped} skipped`;
  return `#${run.id} ${run.command} ${run.outcome} at ${run.startedAt} by ${run.runBy}@${run.host} (${what})`;
}

/** The drift section: per version with outliers, who differs from whom and in which objects. */
export function driftLines(drift: DriftReport): string[] {
  const lines = [pc.bold('Drift (each tenant schema against the others at the same applied version)')];
  if (drift.groups.length === 0) {
    const versions = plural(drift.versions, 'applied version');
    return [
      ...lines,
      pc.green(`No drift: ${plural(drift.tenants, 'tenant')} over ${versions}, each like its version's majority`),
    ];
  }
  for (const group of drift.groups) lines.push(...groupLines(group));
  lines.push(
    pc.yellow(
      `${plural(drift.drifted, 'tenant')} of ${drift.tenants} ${drift.drifted === 1 ? 'differs' : 'differ'} from the majority at their version`,
    ),
  );
  return lines;
}

function groupLines(group: DriftGroup): string[] {
  const at = group.version.latest === null ? 'no migration applied' : group.version.latest;
  const rep = group.majority.representative;
  const lines = [
    `at ${at} (${plural(group.version.applied, 'migration')} applied): ${group.tenants} tenants, ` +
      `${group.majority.tenants} share the majority schema (like ${rep.orgId}, ${rep.schema})` +
      (group.tie ? pc.yellow(' — a tie: no clear majority') : ''),
  ];
  for (const outlier of group.outliers) {
    const names = outlier.tenants.slice(0, DRIFT_TENANTS).map((t) => `${t.orgId} (${t.schema})`);
    const more = outlier.tenants.length - names.length;
    lines.push(
      pc.yellow(`  ${names.join(', ')}${more > 0 ? ` and ${more} more` : ''}`) +
        ` ${outlier.tenants.length === 1 ? 'differs' : 'differ'} from ${rep.orgId}:`,
    );
    if (outlier.diff === null) lines.push(pc.dim('    (not listed: too many distinct outliers; see the first ones)'));
    else lines.push(...diffLines(outlier.diff).map((l) => `    ${l}`));
  }
  return lines;
}

/** `+ column members.hotfix integer`, `- index …`, `~ column …: majority → outlier`. Pure. */
export function diffLines(diff: readonly ObjectDiff[], limit = DRIFT_OBJECTS): string[] {
  const lines = diff.slice(0, limit).map((d) => {
    if (d.change === 'added') return `+ ${d.object} (only here): ${cut(oneLine(d.outlier ?? ''), 120)}`;
    if (d.change === 'missing') return `- ${d.object} (missing here): ${cut(oneLine(d.majority ?? ''), 120)}`;
    return `~ ${d.object}: ${cut(oneLine(d.majority ?? ''), 80)} → ${cut(oneLine(d.outlier ?? ''), 80)}`;
  });
  if (diff.length > limit) lines.push(pc.dim(`… and ${diff.length - limit} more objects (see --json)`));
  if (diff.length === 0) lines.push(pc.dim('(the same objects; they differ in something drift does not name)'));
  return lines;
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}
