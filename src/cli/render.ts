import cliProgress from 'cli-progress';
import pc from 'picocolors';
import type { FanoutReport, TenantReport } from '../migrations/fanout.ts';
import type { SchemaRunReport } from '../migrations/runner.ts';
import type { StatusReport } from '../migrations/status.ts';
import type { ProvisionReport } from '../provisioning/provisioner.ts';

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

export function seconds(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

export function renderMasterRun(out: Output, report: SchemaRunReport): void {
  out.document({ command: report.direction === 'up' ? 'migrate:master' : 'rollback:master', ...report });
  if (report.error) {
    out.line(pc.red(`Master migration failed: ${report.error.message}`));
    return;
  }
  const verb = report.direction === 'up' ? 'Applied' : 'Rolled back';
  if (report.migrations.length === 0)
    out.line(report.direction === 'up' ? 'Already up to date' : 'Nothing to roll back');
  else
    out.line(
      `${verb} ${report.migrations.length} master migration${report.migrations.length === 1 ? '' : 's'}: ${report.migrations.join(', ')}`,
    );
  for (const warning of report.warnings) out.line(pc.yellow(`warning: ${warning}`));
}

export function renderProvision(out: Output, report: ProvisionReport): void {
  out.document({ command: 'provision:tenant', ...report });
  if (report.outcome === 'already-active')
    out.line(`${report.orgId} is already ACTIVE → ${report.schema} (nothing to do)`);
  else if (report.outcome === 'provisioned') {
    const n = report.migrations.length;
    out.line(
      `Provisioned ${report.orgId} → ${report.schema} (${n} migration${n === 1 ? '' : 's'}, ${seconds(report.durationMs)})`,
    );
  } else out.line(pc.red(`Provisioning ${report.orgId} → ${report.schema} FAILED: ${report.error?.message}`));
}

/**
 * Live progress for a fan-out: a progress bar on a terminal (cli-progress), plain lines for
 * tenants that did something otherwise, nothing at all in `--json` mode.
 */
export function fanoutProgress(
  out: Output,
  verb: string,
): { onStart(total: number, toRun: number): void; onTenant(report: TenantReport): void; stop(): void } {
  const tty = Boolean(process.stderr.isTTY) && !out.json;
  let bar: cliProgress.SingleBar | undefined;
  let done = 0;
  let toRun = 0;
  return {
    onStart(_total, n) {
      toRun = n;
      if (tty && n > 0) {
        bar = new cliProgress.SingleBar(
          {
            stream: process.stderr,
            format: `${verb} {bar} {value}/{total} tenants | {eta_formatted} left | {tenant}`,
            hideCursor: true,
            clearOnComplete: true,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(n, 0, { tenant: '' });
      }
    },
    onTenant(report) {
      if (report.outcome !== 'migrated' && report.outcome !== 'failed') return;
      done++;
      if (bar) bar.update(done, { tenant: report.orgId });
      else if (!out.json) {
        const pct = toRun === 0 ? 100 : Math.floor((done / toRun) * 100);
        const what =
          report.outcome === 'failed'
            ? pc.red(`FAILED: ${report.error?.message}`)
            : `${report.migrations.length} migration(s)`;
        out.line(`[${done}/${toRun} (${pct}%) ${report.orgId} ${report.schema}] ${what}`);
      }
    },
    stop() {
      bar?.stop();
    },
  };
}

export function renderFanout(out: Output, command: string, report: FanoutReport): void {
  out.document({ command, ...report });
  const t = report.totals;
  const moved = report.direction === 'up' ? 'migrated' : 'rolled back';
  out.line(
    `${t.total} tenant${t.total === 1 ? '' : 's'}: ${t.migrated} ${moved}, ${t['up-to-date']} ${report.direction === 'up' ? 'up to date' : 'with nothing to roll back'}, ` +
      `${t.failed} failed, ${t.skipped} skipped (${seconds(report.durationMs)})`,
  );
  for (const tenant of report.tenants) {
    for (const warning of tenant.warnings)
      out.line(pc.yellow(`warning: ${tenant.orgId} (${tenant.schema}): ${warning}`));
  }
  const failed = report.tenants.filter((r) => r.outcome === 'failed');
  if (failed.length > 0) {
    out.line(pc.red('Failed:'));
    for (const r of failed) out.line(pc.red(`  ${r.orgId} (${r.schema}): ${r.error?.message}`));
  }
  const skipped = report.tenants.filter((r) => r.outcome === 'skipped');
  if (skipped.length > 0 && skipped.length <= 50) {
    for (const r of skipped) out.line(pc.dim(`  skipped ${r.orgId} (${r.schema}): ${r.error?.message}`));
  }
}

export function renderStatus(out: Output, report: StatusReport): void {
  out.document({ command: 'migrate:status', ...report });
  out.line(pc.bold('Master migrations (public.knex_migrations_master)'));
  for (const m of report.master.applied) out.line(`  ${pc.green('applied')}  batch ${m.batch}  ${m.name}`);
  for (const name of report.master.pending) out.line(`  ${pc.yellow('pending')}           ${name}`);
  for (const name of report.master.missing) out.line(`  ${pc.red('missing')}           ${name} (applied, file gone)`);
  if (!report.registryExists) {
    out.line(pc.yellow('No tenant registry yet: run `pnpm migrate:master`'));
    return;
  }
  out.line();
  out.line(pc.bold('Tenants'));
  const rows = report.tenants.map((t) => [
    t.orgId,
    t.schema,
    t.status,
    String(t.applied),
    t.pending.length === 0 ? '-' : t.pending.join(', '),
    t.state === 'up-to-date' ? pc.green(t.state) : t.state === 'behind' ? pc.yellow(t.state) : pc.red(t.state),
    t.error ?? (t.missing.length > 0 ? `missing files: ${t.missing.join(', ')}` : ''),
  ]);
  table(out, ['ORG ID', 'SCHEMA', 'STATUS', 'APPLIED', 'PENDING', 'STATE', 'ERROR'], rows);
  for (const orphan of report.orphans) out.line(pc.yellow(`orphan schema ${orphan}: no registry row claims it`));
  const s = report.summary;
  const parts = [`${s['up-to-date']} up to date`, `${s.behind} behind`, `${s.failed} failed`];
  if (s['schema-missing'] > 0) parts.push(`${s['schema-missing']} with a missing schema`);
  if (s['not-active'] > 0) parts.push(`${s['not-active']} not active`);
  if (report.orphans.length > 0)
    parts.push(`${report.orphans.length} orphan schema${report.orphans.length === 1 ? '' : 's'}`);
  out.line();
  out.line(parts.join(', '));
}

/** Aligned columns, measured without colour codes. */
function table(out: Output, header: readonly string[], rows: readonly (readonly string[])[]): void {
  const visible = (s: string): number => s.replace(/\u001b\[[0-9;]*m/g, '').length;
  const widths = header.map((h, i) => Math.max(visible(h), ...rows.map((r) => visible(r[i] ?? ''))));
  const format = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c + ' '.repeat(widths[i]! - visible(c))))
      .join('  ')
      .trimEnd();
  out.line(pc.dim(format(header)));
  for (const row of rows) out.line(format(row));
}
