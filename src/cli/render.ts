import { createRequire } from 'node:module';
import type cliProgress from 'cli-progress';
import pc from 'picocolors';
import { MAIN_SERVER } from '../config/config.ts';
import type { RunDetail, RunSummary } from '../ledger/history.ts';
import type { FanoutReport, TenantReport } from '../migrations/fanout.ts';
import type { SharedRunReport } from '../migrations/master.ts';
import type { SchemaRunReport } from '../migrations/unit.ts';
import type { ProvisionReport } from '../provisioning/provisioner.ts';

/**
 * Rendering: a report is a plain object; each kind has a JSON renderer and a text renderer, two
 * functions of the same report. Commands call `show`, which picks one by `--json`.
 */

/** All output goes through here: text for people, one JSON document for machines. */
export interface Output {
  readonly json: boolean;
  line(text?: string): void;
  /** Writes the JSON document (only in `--json` mode). */
  document(value: unknown): void;
}

export function createOutput(json: boolean): Output {
  return {
    json,
    line: (text = '') => {
      if (!json) process.stdout.write(`${text}\n`);
    },
    document: (value) => {
      if (json) process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
    },
  };
}

/** The two renderings of one kind of report. */
export interface Renderer<R> {
  json(report: R): unknown;
  text(report: R): readonly string[];
}

/** Writes a report as JSON or as text lines. */
export function show<R>(out: Output, renderer: Renderer<R>, report: R): void {
  if (out.json) out.document(renderer.json(report));
  else for (const line of renderer.text(report)) out.line(line);
}

/** A duration given in milliseconds, as people read it: `120 ms`, `3.4 s`. */
export function formatDuration(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** `migrate:master`: the master run, and the shared migrations' run on each server when there are any. */
export type MasterCommandReport = SchemaRunReport & { readonly shared?: readonly SharedRunReport[] };

export const masterRun: Renderer<MasterCommandReport> = {
  json: (report) => {
    const { shared, ...master } = report;
    return {
      command: report.direction === 'up' ? 'migrate:master' : 'rollback:master',
      ...master,
      ...(shared && shared.length > 0 ? { shared } : {}),
    };
  },
  text: (report) => [...masterLines(report), ...(report.shared ?? []).map(sharedLine)],
};

/** One server's shared migrations, one line. */
function sharedLine({ server, location, report }: SharedRunReport): string {
  const where = `${server} (${location})`;
  if (report.error) return pc.red(`Shared migrations failed on ${where}: ${report.error.message}`);
  if (report.migrations.length === 0) return `Shared migrations on ${where}: up to date`;
  return `Shared migrations on ${where}: applied ${plural(report.migrations.length, 'migration')}: ${report.migrations.join(', ')}`;
}

const masterLines = (report: SchemaRunReport): string[] => {
  {
    if (report.outcome === 'would-fail')
      return [pc.red(`Dry run: master migration would fail: ${report.error?.message}`)];
    if (report.error) return [pc.red(`Master migration failed: ${report.error.message}`)];
    const verb =
      report.outcome === 'would-migrate'
        ? 'Dry run, nothing written: would apply'
        : report.direction === 'up'
          ? 'Applied'
          : 'Rolled back';
    const lines =
      report.migrations.length === 0
        ? [report.direction === 'up' ? 'Already up to date' : 'Nothing to roll back']
        : [`${verb} ${plural(report.migrations.length, 'master migration')}: ${report.migrations.join(', ')}`];
    return [...lines, ...report.warnings.map((w) => pc.yellow(`warning: ${w}`))];
  }
};

export const provisionRun: Renderer<ProvisionReport> = {
  json: (report) => ({ command: 'provision:tenant', ...report }),
  text: (report) => {
    if (report.outcome === 'already-active')
      return [`${report.orgId} is already ACTIVE → ${report.schema} (nothing to do)`];
    if (report.outcome === 'would-provision') {
      return [
        `Dry run, nothing written: ${report.orgId} → ${report.schema} would be provisioned (${report.migrations.join(', ') || 'no migrations'})`,
      ];
    }
    if (report.outcome === 'would-fail') {
      return [pc.red(`Dry run: provisioning ${report.orgId} → ${report.schema} would fail: ${report.error?.message}`)];
    }
    if (report.outcome === 'provisioned') {
      const what = `${plural(report.migrations.length, 'migration')}, ${formatDuration(report.durationMs)}`;
      return [`Provisioned ${report.orgId} → ${report.schema} (${what})`];
    }
    const lines = [pc.red(`Provisioning ${report.orgId} → ${report.schema} FAILED: ${report.error?.message}`)];
    if (report.migrations.length > 0) {
      lines.push(
        pc.yellow(`  committed before the failure (transaction: false steps): ${report.migrations.join(', ')}`),
      );
    }
    return lines;
  },
};

/** A fan-out report, named by the command that ran it. */
export function fanoutRun(command: string): Renderer<FanoutReport> {
  return {
    json: (report) => ({ command, ...report }),
    text: (report) => (report.dryRun ? dryRunText(report) : runText(report)),
  };
}

function runText(report: FanoutReport): string[] {
  const t = report.totals;
  const moved = report.direction === 'up' ? 'migrated' : 'rolled back';
  const idle = report.direction === 'up' ? 'up to date' : 'with nothing to roll back';
  const lines = [
    `${plural(t.total, 'tenant')}: ${t.migrated} ${moved}, ${t['up-to-date']} ${idle}, ` +
      `${t.failed} failed, ${t.skipped} skipped (${formatDuration(report.durationMs)})`,
    ...serverTotals(report.tenants, [
      ['migrated', moved],
      ['up-to-date', idle],
      ['failed', 'failed'],
      ['skipped', 'skipped'],
    ]),
  ];
  return [...lines, ...pacingLines(report), ...detailLines(report, 'failed', 'Failed:')];
}

/**
 * Tenants on several servers: one line of totals per server (`eu1: 3 migrated, 1 failed`), the
 * counts that are not zero in the order of `words`, the main server first, then by name. None
 * when the reports name fewer than two servers (a single server, or none configured).
 */
export function serverTotals(
  tenants: readonly { readonly server?: string; readonly outcome: string }[],
  words: readonly (readonly [outcome: string, word: string])[],
): string[] {
  const byServer = new Map<string, Map<string, number>>();
  for (const { server, outcome } of tenants) {
    if (server === undefined) continue;
    const counts = byServer.get(server) ?? new Map<string, number>();
    counts.set(outcome, (counts.get(outcome) ?? 0) + 1);
    byServer.set(server, counts);
  }
  if (byServer.size < 2) return [];
  const order = [...byServer.keys()].sort((a, b) =>
    a === MAIN_SERVER ? -1 : b === MAIN_SERVER ? 1 : a < b ? -1 : a > b ? 1 : 0,
  );
  return order.map((server) => {
    const counts = byServer.get(server)!;
    const parts = words.filter(([outcome]) => counts.has(outcome)).map(([o, word]) => `${counts.get(o)} ${word}`);
    return `${server}: ${parts.join(', ')}`;
  });
}

/** A dry-run: what would happen, per tenant that has work, and the totals. */
function dryRunText(report: FanoutReport): string[] {
  const t = report.totals;
  const lines: string[] = [];
  if (report.sql) {
    lines.push(pc.bold(`SQL of ${report.sql.orgId} (${report.sql.schema}), captured in its dry-run:`));
    lines.push(`-- run with search_path = "${report.sql.schema}", public (transaction-local), as every tenant's batch`);
    if (report.sql.statements.length === 0) lines.push(pc.dim('  (no statements)'));
    for (const statement of report.sql.statements) lines.push(`${statement};`);
    lines.push('');
  }
  const verb = report.direction === 'up' ? 'would migrate' : 'would roll back';
  const rows = report.tenants
    .filter((r) => r.outcome === 'would-migrate' || r.outcome === 'would-fail')
    .map((r) => [
      r.orgId,
      r.schema,
      r.outcome === 'would-fail' ? pc.red('would-fail') : pc.green('would-migrate'),
      r.outcome === 'would-fail'
        ? `${r.error?.migration ?? '-'}: ${r.error?.message ?? ''}`
        : [...r.migrations, ...r.notChecked.map((n) => `${n} (not checked)`)].join(', '),
    ]);
  if (rows.length > 0 && rows.length <= 200) lines.push(...table(['ORG ID', 'SCHEMA', 'DRY-RUN', 'MIGRATIONS'], rows));
  else if (rows.length > 200) lines.push(pc.dim(`${rows.length} tenants with work (see --json for each)`));
  const notChecked = report.tenants.filter((r) => r.notChecked.length > 0).length;
  if (notChecked > 0) {
    lines.push(
      pc.yellow(
        `not checked: transaction: false migrations cannot be rolled back, so a dry-run does not execute them ` +
          `(nor what follows them) on ${plural(notChecked, 'tenant')}`,
      ),
    );
  }
  lines.push(
    `Dry run, nothing written: ${plural(t.total, 'tenant')}: ${t['would-migrate'] ?? 0} ${verb}, ` +
      `${t['would-fail'] ?? 0} would fail, ${t['up-to-date']} ${report.direction === 'up' ? 'up to date' : 'with nothing to roll back'}, ` +
      `${t.skipped} skipped (${formatDuration(report.durationMs)})`,
    ...serverTotals(report.tenants, [
      ['would-migrate', verb],
      ['would-fail', 'would fail'],
      ['up-to-date', report.direction === 'up' ? 'up to date' : 'with nothing to roll back'],
      ['skipped', 'skipped'],
    ]),
  );
  return [...lines, ...pacingLines(report), ...detailLines(report, 'would-fail', 'Would fail:')];
}

/** Canaries, waves and why the run stopped early. */
function pacingLines(report: FanoutReport): string[] {
  const lines: string[] = [];
  if (report.canaries.length > 0) lines.push(`Canaries: ${report.canaries.join(', ')}`);
  if (report.waves.length > 1) lines.push(`Waves: ${report.waves.map((w) => w.length).join(' → ')} tenants`);
  if (report.stoppedBy === 'canary') lines.push(pc.red('Stopped: a canary failed; no other tenant was started'));
  else if (report.stoppedBy === 'wave') lines.push(pc.red('Stopped: a wave had a failure; later waves not started'));
  else if (report.stoppedBy === 'max-failures') lines.push(pc.red('Stopped: the failure budget was spent'));
  const unguarded = [...new Set(report.tenants.flatMap((r) => r.unguarded))];
  if (unguarded.length > 0) lines.push(pc.yellow(`allowOutsideSchema (escape guard off): ${unguarded.join(', ')}`));
  return lines;
}

/** Warnings, then each failure with its migration and reason, then the skipped tenants. */
function detailLines(report: FanoutReport, failure: 'failed' | 'would-fail', title: string): string[] {
  const lines: string[] = [];
  for (const tenant of report.tenants) {
    for (const warning of tenant.warnings)
      lines.push(pc.yellow(`warning: ${tenant.orgId} (${tenant.schema}): ${warning}`));
  }
  return [...lines, ...failedAndSkipped(report.tenants, (outcome) => outcome === failure, title)];
}

/** The tenants of a fan-out's report as its text closes: each failure with its reason, then the skipped ones. */
export function failedAndSkipped(
  tenants: readonly {
    readonly orgId: string;
    readonly schema: string;
    readonly outcome: string;
    readonly error: { readonly message: string } | null;
  }[],
  isFailure: (outcome: string) => boolean,
  title: string,
): string[] {
  const lines: string[] = [];
  const failed = tenants.filter((r) => isFailure(r.outcome));
  if (failed.length > 0) {
    lines.push(pc.red(title));
    for (const r of failed) lines.push(pc.red(`  ${r.orgId} (${r.schema}): ${r.error?.message}`));
  }
  const skipped = tenants.filter((r) => r.outcome === 'skipped');
  if (skipped.length > 0 && skipped.length <= 50) {
    for (const r of skipped) lines.push(pc.dim(`  skipped ${r.orgId} (${r.schema}): ${r.error?.message}`));
  } else if (skipped.length > 50) lines.push(pc.dim(`  ${skipped.length} skipped (see --json for each)`));
  return lines;
}

export const runList: Renderer<readonly RunSummary[]> = {
  json: (runs) => ({ command: 'migrate:runs', runs }),
  text: (runs) => {
    if (runs.length === 0) return ['No runs in the ledger yet'];
    const outcome = (o: string): string =>
      o === 'succeeded' ? pc.green(o) : o === 'running' ? pc.cyan(o) : o === 'failed' ? pc.red(o) : pc.yellow(o);
    const rows = runs.map((r) => [
      String(r.id),
      r.startedAt.replace('T', ' ').slice(0, 19),
      r.command + (r.rollsBack === null ? '' : ` (of #${r.rollsBack})`),
      `${r.runBy}@${r.host}`,
      outcome(r.outcome),
      String(r.counts.migrated),
      String(r.counts.failed),
      String(r.counts.skipped),
      r.durationMs === null ? '-' : formatDuration(r.durationMs),
    ]);
    return table(['RUN', 'STARTED (UTC)', 'COMMAND', 'WHO', 'OUTCOME', 'MIGRATED', 'FAILED', 'SKIPPED', 'TOOK'], rows);
  },
};

export const runDetail: Renderer<RunDetail> = {
  json: (run) => ({ command: 'migrate:runs', run }),
  text: (run) => {
    const lines = [...runList.text([run]), ''];
    if (run.tenants.length === 0) return [...lines, 'No tenant was changed by this run'];
    const rows = run.tenants.map((t) => [
      t.orgId ?? '-',
      t.schema,
      t.outcome === 'failed' ? pc.red(t.outcome) : t.direction === 'down' ? 'rolled back' : t.outcome,
      t.batch === null ? '-' : String(t.batch),
      t.migrations.join(', ') || '-',
      t.error ?? '',
    ]);
    return [...lines, ...table(['ORG ID', 'SCHEMA', 'OUTCOME', 'BATCH', 'MIGRATIONS', 'ERROR'], rows)];
  },
};

/**
 * Live progress for a fan-out: a progress bar on a terminal (cli-progress), plain lines for
 * tenants that did something otherwise, nothing at all in `--json` mode.
 */
export function fanoutProgress<R extends ProgressReport = TenantReport>(
  out: Output,
  verb: string,
  /** What a tenant that did not fail did (default: its migrations), for the plain progress lines. */
  describe: (report: R) => string = migrationsDone as (report: ProgressReport) => string,
): {
  onStart(total: number, toRun: number): void;
  onWave(wave: number, waves: number, size: number): void;
  onTenant(report: R): void;
  stop(): void;
} {
  const tty = Boolean(process.stderr.isTTY) && !out.json;
  let bar: cliProgress.SingleBar | undefined;
  let done = 0;
  let toRun = 0;
  return {
    onStart(_total, n) {
      toRun = n;
      if (tty && n > 0) {
        // Loaded on first use only (a terminal with work to show): --json and pipes never pay for it.
        const progress = createRequire(import.meta.url)('cli-progress') as typeof cliProgress;
        bar = new progress.SingleBar(
          {
            stream: process.stderr,
            format: `${verb} {bar} {value}/{total} tenants | {eta_formatted} left | {tenant}`,
            hideCursor: true,
            clearOnComplete: true,
          },
          progress.Presets.shades_classic,
        );
        bar.start(n, 0, { tenant: '' });
      }
    },
    onWave(wave, waves, size) {
      if (waves > 1 && !out.json) {
        const text = `wave ${wave}/${waves}: ${plural(size, 'tenant')}`;
        if (bar) bar.update(done, { tenant: text });
        else process.stderr.write(`${pc.bold(text)}\n`);
      }
    },
    onTenant(report) {
      if (report.outcome === 'up-to-date' || report.outcome === 'skipped') return;
      done++;
      if (bar) bar.update(done, { tenant: report.orgId });
      else if (!out.json) {
        const pct = toRun === 0 ? 100 : Math.floor((done / toRun) * 100);
        const what =
          report.outcome === 'failed' || report.outcome === 'would-fail'
            ? pc.red(`${report.outcome === 'failed' ? 'FAILED' : 'would fail'}: ${report.error?.message}`)
            : describe(report);
        out.line(`[${done}/${toRun} (${pct}%) ${report.orgId} ${report.schema}] ${what}`);
      }
    },
    stop() {
      bar?.stop();
    },
  };
}

/** What the progress lines need of a tenant's report (a fan-out's, or a `tenants:run`'s). */
export interface ProgressReport {
  readonly orgId: string;
  readonly schema: string;
  /** `up-to-date` and `skipped` are not shown; `failed` and `would-fail` are shown with the error. */
  readonly outcome: string;
  readonly error: { readonly message: string } | null;
}

function migrationsDone(report: TenantReport): string {
  return `${report.migrations.length} migration(s)${report.outcome === 'would-migrate' ? ' (dry run)' : ''}`;
}

/** Aligned columns, measured without colour codes. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string[] {
  const visible = (s: string): number => s.replace(/\u001b\[[0-9;]*m/g, '').length;
  const widths = header.map((h, i) => Math.max(visible(h), ...rows.map((r) => visible(r[i] ?? ''))));
  const format = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c + ' '.repeat(widths[i]! - visible(c))))
      .join('  ')
      .trimEnd();
  return [pc.dim(format(header)), ...rows.map(format)];
}
