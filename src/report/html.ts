import type { ErrorGroup, FleetReport, FleetServer, FleetVersion, RunWithFailures } from './fleet.ts';

/**
 * The fleet report as one self-contained HTML page: inline CSS and SVG, no script, no font, no
 * network. Every chart has its numbers in a table beside it; the colours differ in lightness and
 * the target version is also marked in words, so the page survives greyscale printing. Pure:
 * a function of the report object.
 */

/** Escapes text for HTML content and attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const e = escapeHtml;

function number(n: number): string {
  return n.toLocaleString('en-US');
}

function when(iso: string): string {
  return iso.replace('T', ' ').slice(0, 19);
}

function duration(ms: number | null): string {
  if (ms === null) return '–';
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** A horizontal bar chart: one bar per row, its label left, its count right. */
export function barChart(
  title: string,
  rows: readonly {
    readonly label: string;
    readonly count: number;
    /** dark, light or hatched: they differ in print too. */
    readonly tone: 'dark' | 'light' | 'hatched';
    /** Words after the count (e.g. `◀ target`), so that no meaning rests on colour alone. */
    readonly note?: string;
  }[],
): string {
  const width = 760;
  const labelWidth = 330;
  const barSpace = width - labelWidth - 110;
  const rowHeight = 26;
  const height = rows.length * rowHeight + 8;
  const max = Math.max(1, ...rows.map((r) => r.count));
  const bars = rows.map((row, i) => {
    const y = 4 + i * rowHeight;
    const w = row.count === 0 ? 0 : Math.max(2, Math.round((row.count / max) * barSpace));
    const fill = row.tone === 'dark' ? '#1f3b57' : row.tone === 'hatched' ? 'url(#hatch)' : '#8fb0cc';
    const label = row.label.length > 44 ? `${row.label.slice(0, 43)}…` : row.label;
    const marker = row.note ? ` ${row.note}` : '';
    return `<g class="row"><text x="${labelWidth - 8}" y="${y + 17}" text-anchor="end" class="label">${e(label)}</text>
<rect class="bar" data-label="${e(row.label)}" data-count="${row.count}" x="${labelWidth}" y="${y + 3}" width="${w}" height="${rowHeight - 8}" fill="${fill}" stroke="#1f3b57" stroke-width="${row.tone === 'hatched' ? 1 : 0}"><title>${e(row.label)}: ${number(row.count)}</title></rect>
<text x="${labelWidth + w + 6}" y="${y + 17}" class="count">${number(row.count)}${marker}</text></g>`;
  });
  return `<svg class="chart" role="img" aria-label="${e(title)}" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" xmlns="http://www.w3.org/2000/svg">
<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#ffffff"/><line x1="0" y1="0" x2="0" y2="6" stroke="#1f3b57" stroke-width="2"/></pattern></defs>
${bars.join('\n')}
</svg>`;
}

function versionRows(versions: readonly FleetVersion[]) {
  return versions.map((v) => ({
    label: v.version,
    count: v.count,
    tone: v.target ? ('dark' as const) : v.version === 'unrecognised' ? ('hatched' as const) : ('light' as const),
    ...(v.target ? { note: '◀ target' } : {}),
  }));
}

function table(header: readonly string[], rows: readonly (readonly string[])[], cls = ''): string {
  const head = header.map((h) => `<th scope="col">${e(h)}</th>`).join('');
  const body = rows.map((r) => `<tr>${r.join('')}</tr>`).join('\n');
  return `<table class="${cls}"><thead><tr>${head}</tr></thead><tbody>\n${body}\n</tbody></table>`;
}

const td = (text: string, cls = ''): string => `<td${cls ? ` class="${cls}"` : ''}>${e(text)}</td>`;
const tdHtml = (html: string, cls = ''): string => `<td${cls ? ` class="${cls}"` : ''}>${html}</td>`;

function errorsSection(errors: readonly ErrorGroup[]): string {
  if (errors.length === 0) return '<p class="ok">No tenant has an error recorded.</p>';
  const rows = errors.map((g) => {
    const listed = g.tenants
      .map((t) => {
        const where = t.server === undefined ? '' : ` on ${t.server}`;
        return `<li>${e(t.orgId)} <span class="dim">${e(t.schema)}${e(where)}</span></li>`;
      })
      .join('');
    const more =
      g.count > g.tenants.length ? `<li class="dim">and ${number(g.count - g.tenants.length)} more</li>` : '';
    const who = `<details><summary>${number(g.count)} tenant${g.count === 1 ? '' : 's'}</summary><ul>${listed}${more}</ul></details>`;
    return [
      td(number(g.count), 'num error-count'),
      td(g.kind),
      td(g.migration ?? '–'),
      td(g.message, 'message'),
      td(when(g.latest)),
      tdHtml(who),
    ];
  });
  return table(['tenants', 'kind', 'migration', 'error', 'latest recorded (UTC)', 'which'], rows, 'errors');
}

/** Tenants on several servers: each server's share; nothing for a fleet on the main server alone. */
function serversSection(servers: readonly FleetServer[] | undefined): string {
  if (!servers) return '';
  const rows = servers.map((s) => [
    td(s.server),
    td(number(s.tenants), 'num'),
    td(number(s.active), 'num'),
    td(number(s.failing), 'num'),
  ]);
  return `<h2 id="servers">Tenants by server</h2>
${table(['server', 'tenants', 'active', 'with an error'], rows, 'servers')}
`;
}

function runsSection(runs: readonly RunWithFailures[]): string {
  if (runs.length === 0) return '<p class="dim">No deploy or rollback in the ledger yet.</p>';
  const rows = runs.map((r) => {
    const failures =
      r.failures.length === 0
        ? '–'
        : `<details><summary>${number(r.counts.failed)} failed</summary><ul>${r.failures
            .map((f) => `<li>${e(f.orgId ?? f.schema)}: ${e(f.error)}</li>`)
            .join(
              '',
            )}${r.counts.failed > r.failures.length ? `<li class="dim">and ${number(r.counts.failed - r.failures.length)} more</li>` : ''}</ul></details>`;
    return [
      td(String(r.id), 'num'),
      td(when(r.startedAt)),
      td(r.command + (r.rollsBack === null ? '' : ` (of #${r.rollsBack})`)),
      td(`${r.runBy}@${r.host}`),
      td(r.outcome, `outcome ${r.outcome}`),
      td(number(r.counts.migrated), 'num'),
      td(number(r.counts.failed), 'num'),
      td(number(r.counts.skipped), 'num'),
      td(duration(r.durationMs), 'num'),
      tdHtml(failures),
    ];
  });
  return table(
    ['run', 'started (UTC)', 'command', 'who', 'outcome', 'migrated', 'failed', 'skipped', 'took', 'failures'],
    rows,
    'runs',
  );
}

const STYLE = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#14202b;margin:24px auto;max-width:1100px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:2px solid #1f3b57;padding-bottom:2px}
.meta{color:#4a5a68;margin:0 0 16px}.dim{color:#5d6b77}.ok{color:#1f3b57;font-weight:600}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}.tile{border:1px solid #9aabba;border-radius:6px;padding:8px 14px;min-width:110px}
.tile b{display:block;font-size:22px}.side{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
table{border-collapse:collapse;margin:6px 0}th,td{border-bottom:1px solid #c9d3db;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef2f5}.num{text-align:right;font-variant-numeric:tabular-nums}.message{max-width:420px;word-break:break-word}
.chart .label{font-size:12px;fill:#14202b}.chart .count{font-size:12px;fill:#14202b;font-weight:600}
.outcome.failed{font-weight:700}.outcome.interrupted{font-style:italic}
details summary{cursor:pointer}ul{margin:4px 0;padding-left:18px}
@media print{body{margin:0;max-width:none}details{display:block}details>*{display:block}h2{break-after:avoid}table,svg{break-inside:avoid}}
`;

/** The whole page. */
export function renderFleetHtml(report: FleetReport): string {
  const active = report.states.find((s) => s.status === 'ACTIVE')?.count ?? 0;
  const atTarget = report.versions.find((v) => v.target)?.count ?? 0;
  const failing = report.errors.reduce((sum, g) => sum + g.count, 0);
  const tiles = [
    ['tenants', report.tenants],
    ['active', active],
    ['at the target version', atTarget],
    ['with an error', failing],
  ]
    .map(([label, n]) => `<div class="tile"><b>${number(Number(n))}</b>${e(String(label))}</div>`)
    .join('');
  const versionTable = table(
    ['latest applied migration', 'active tenants'],
    report.versions.map((v) => [td(v.version + (v.target ? ' (target)' : '')), td(number(v.count), 'num')]),
    'versions',
  );
  const stateTable = table(
    ['state', 'tenants'],
    report.states.map((s) => [td(s.status), td(number(s.count), 'num')]),
    'states',
  );
  const stateChart = barChart(
    'Tenants by state',
    report.states.map((s) => ({
      label: s.status,
      count: s.count,
      tone:
        s.status === 'ACTIVE' ? ('dark' as const) : s.status === 'FAILED' ? ('hatched' as const) : ('light' as const),
    })),
  );
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Tenant fleet report: ${e(report.database)}</title><style>${STYLE}</style></head>
<body>
<h1>Tenant fleet report</h1>
<p class="meta">Generated ${e(when(report.generatedAt))} UTC · database <b>${e(report.database)}</b> · tenant-migrate ${e(report.toolkitVersion)} · target version <b>${e(report.target ?? 'none')}</b></p>
<div class="tiles">${tiles}</div>
<h2 id="versions">Active tenants by latest applied migration</h2>
<p class="dim">From each tenant's registry digest (its set of applied migrations). <i>unrecognised</i>: a set that is no prefix of the migration folder (applied out of order, renamed files, or none recorded yet; <code>migrate:status --verify</code> reads them).</p>
<div class="side" id="versions-chart">${barChart('Active tenants by latest applied migration', versionRows(report.versions))}${versionTable}</div>
<h2 id="states">Tenants by state</h2>
<div class="side" id="states-chart">${stateChart}${stateTable}</div>
${serversSection(report.servers)}<h2 id="errors">Tenants with errors</h2>
${errorsSection(report.errors)}
<h2 id="runs">Recent runs (from the run ledger)</h2>
${runsSection(report.runs)}
</body></html>
`;
}
