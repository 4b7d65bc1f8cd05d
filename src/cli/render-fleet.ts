import pc from 'picocolors';
import type { TenantListReport } from '../fleet/list.ts';
import type { FleetRunReport, TenantRunReport } from '../fleet/run.ts';
import { failedAndSkipped, formatDuration, plural, type Renderer, serverTotals, table } from './render.ts';

/**
 * `tenants:run` and `tenants:list` as people read them; `--json` prints the reports themselves.
 * A run's results: one table when every tenant returned at most one row (a count per tenant),
 * otherwise a short table per tenant, the rest left to `--json`.
 */

/** Rows shown per tenant in text (the report keeps up to its row limit; `--json` shows them). */
const TEXT_ROWS = 20;
/** Tenants whose rows are shown one table each, in text. */
const TEXT_TENANTS = 50;
const CELL_WIDTH = 60;
const ERROR_WIDTH = 80;

export const fleetRun: Renderer<FleetRunReport> = {
  json: (report) => ({ command: 'tenants:run', ...report }),
  text: (report) => [...resultLines(report), ...summaryLines(report)],
};

function resultLines(report: FleetRunReport): string[] {
  const returned = report.tenants.filter((t) => t.rows !== null);
  if (returned.length === 0) return [];
  if (returned.every((t) => (t.rows?.length ?? 0) <= 1)) {
    const columns = columnsOf(returned);
    const rows = returned.map((t) => [t.orgId, ...columns.map((c) => (t.rows?.[0] ? cell(t.rows[0][c]) : '-'))]);
    return [...table(['ORG ID', ...columns.map((c) => c.toUpperCase())], rows), ''];
  }
  const lines: string[] = [];
  for (const tenant of returned.slice(0, TEXT_TENANTS)) {
    const shown = tenant.rows!.slice(0, TEXT_ROWS);
    const count = tenant.capped
      ? `${tenant.rowCount} rows, the first ${report.rowLimit} kept`
      : plural(tenant.rowCount, 'row');
    lines.push(pc.bold(`${tenant.orgId} (${tenant.schema}): ${count}`));
    if (shown.length > 0) {
      const columns = columnsOf([tenant]);
      lines.push(
        ...table(
          columns.map((c) => c.toUpperCase()),
          shown.map((row) => columns.map((c) => cell(row[c]))),
        ),
      );
    }
    const hidden = tenant.rows!.length - shown.length;
    if (hidden > 0) lines.push(pc.dim(`  … ${hidden} more (see --json)`));
    lines.push('');
  }
  if (returned.length > TEXT_TENANTS)
    lines.push(pc.dim(`${returned.length - TEXT_TENANTS} more tenants returned rows (see --json)`), '');
  return lines;
}

function summaryLines(report: FleetRunReport): string[] {
  const t = report.totals;
  const took = formatDuration(report.durationMs);
  const lines = report.dryRun
    ? [
        `Dry run, rolled back in every tenant: ${plural(t.total, 'tenant')}: ${t['would-run'] ?? 0} would run, ` +
          `${t['would-fail'] ?? 0} would fail, ${t.skipped} skipped (${took})`,
      ]
    : [`${plural(t.total, 'tenant')}: ${t.ran} ran, ${t.failed} failed, ${t.skipped} skipped (${took})`];
  lines.push(
    ...serverTotals(report.tenants, [
      ['ran', 'ran'],
      ['would-run', 'would run'],
      ['failed', 'failed'],
      ['would-fail', 'would fail'],
      ['skipped', 'skipped'],
    ]),
  );
  if (report.runId !== null) lines.push(pc.dim(`Ledger: run ${report.runId} (pnpm migrate:runs ${report.runId})`));
  const capped = report.tenants.filter((r) => r.capped).length;
  if (capped > 0)
    lines.push(
      pc.yellow(`${plural(capped, 'tenant')} returned more than ${report.rowLimit} rows: the rest are left out`),
    );
  if (!report.transaction) {
    lines.push(
      pc.yellow('--no-transaction: statements committed one by one; the escape guard checked only the search path'),
    );
  } else if (!report.guarded)
    lines.push(pc.yellow('escape guard off: changes outside the tenant schemas were allowed'));
  for (const warning of report.warnings) lines.push(pc.yellow(`warning: ${warning}`));
  if (report.stoppedBy === 'max-failures') lines.push(pc.red('Stopped: the failure budget was spent'));
  const isFailure = (outcome: string): boolean => outcome === 'failed' || outcome === 'would-fail';
  return [...lines, ...failedAndSkipped(report.tenants, isFailure, report.dryRun ? 'Would fail:' : 'Failed:')];
}

/** Column names in first-seen order across these tenants' rows. */
function columnsOf(tenants: readonly TenantRunReport[]): string[] {
  const columns = new Set<string>();
  for (const tenant of tenants)
    for (const row of tenant.rows ?? []) for (const key of Object.keys(row)) columns.add(key);
  return [...columns];
}

function cell(value: unknown): string {
  const text =
    value === null || value === undefined ? 'null' : typeof value === 'object' ? JSON.stringify(value) : String(value);
  const line = text.replace(/\s*\n\s*/g, ' ');
  return line.length > CELL_WIDTH ? `${line.slice(0, CELL_WIDTH - 1)}…` : line;
}

/** The progress line of a tenant that ran: its row count. */
export function ranLine(report: TenantRunReport): string {
  const rows = report.rows === null ? 'done' : plural(report.rowCount, 'row');
  return report.outcome === 'would-run' ? `${rows} (dry run, rolled back)` : rows;
}

export const tenantList: Renderer<TenantListReport> = {
  json: (report) => ({ command: 'tenants:list', ...report }),
  text: (report) => {
    if (report.registered === 0) return ['No tenants registered yet (pnpm provision:tenant <org_id>)'];
    const filtered = report.tenants.length !== report.registered;
    if (report.tenants.length === 0) return [`No tenant matches (${plural(report.registered, 'tenant')} registered)`];
    // Tenants on several servers: each one's server after its schema.
    const servers = report.tenants.some((t) => t.server !== undefined);
    const rows = report.tenants.map((t) => {
      const unreachable = t.state === 'unreachable';
      return [
        t.orgId,
        t.schema,
        ...(servers ? [t.server ?? '-'] : []),
        t.status === 'ACTIVE' ? t.status : pc.yellow(t.status),
        unreachable ? pc.red('unreachable') : (t.version ?? '-'),
        unreachable ? '?' : t.pending === 0 ? '0' : pc.yellow(String(t.pending)),
        t.labels.join(',') || '-',
        t.createdAt.replace('T', ' ').slice(0, 16),
        t.lastMigratedAt?.replace('T', ' ').slice(0, 16) ?? '-',
        t.lastError === null ? '' : pc.red(short(t.lastError)),
      ];
    });
    const header = [
      'ORG ID',
      'SCHEMA',
      ...(servers ? ['SERVER'] : []),
      'STATUS',
      'VERSION',
      'PENDING',
      'LABELS',
      'CREATED (UTC)',
      'LAST MIGRATED',
      'LAST ERROR',
    ];
    const count = filtered
      ? `${report.tenants.length} of ${plural(report.registered, 'tenant')}`
      : plural(report.registered, 'tenant');
    const warnings = (report.unreachable ?? []).map((down) => pc.yellow(`warning: ${down.message}`));
    return [...table(header, rows), ...warnings, pc.dim(count)];
  },
};

function short(text: string): string {
  const line = text.replace(/\s*\n\s*/g, ' ');
  return line.length > ERROR_WIDTH ? `${line.slice(0, ERROR_WIDTH - 1)}…` : line;
}
