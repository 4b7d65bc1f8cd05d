import pc from 'picocolors';
import type { LifecycleReport } from '../provisioning/lifecycle.ts';
import type { RetryReport, RetryTenantReport } from '../provisioning/retry.ts';
import { formatDuration, plural, type Renderer } from './render.ts';

/** `tenant:archive`, `tenant:restore` and `tenant:drop`: one report each, as text or JSON. */
export const lifecycleRun: Renderer<LifecycleReport> = {
  json: (report) => ({ command: `tenant:${report.action}`, ...report }),
  text: (report) => {
    const who = `${report.orgId} (${report.schema})`;
    switch (report.outcome) {
      case 'archived':
        return [
          `Archived ${who}: no longer served, schema and data kept (it was ${report.previousStatus})`,
          pc.dim(`  bring it back with: pnpm tenant:restore ${report.orgId}`),
        ];
      case 'already-archived':
        return [`${who} is already ARCHIVED (nothing to do)`];
      case 'restored': {
        const applied =
          report.migrations.length === 0
            ? 'no migration was pending'
            : `${plural(report.migrations.length, 'migration')} applied first: ${report.migrations.join(', ')}`;
        return [`Restored ${who}: ACTIVE again, ${applied} (${formatDuration(report.durationMs)})`];
      }
      case 'already-active':
        return [`${who} is ACTIVE (nothing to restore)`];
      case 'dropped':
        return dropped(report);
      case 'already-deleted':
        return [`${who} was already dropped: its registry row is DELETED (nothing to do)`];
      case 'failed': {
        const at = report.error?.migration ? ` at ${report.error.migration}` : '';
        const lines = [pc.red(`Restoring ${who} FAILED${at}: ${report.error?.message}; it stays ARCHIVED`)];
        if (report.migrations.length > 0) {
          lines.push(pc.yellow(`  committed before the failure: ${report.migrations.join(', ')}`));
        }
        return lines;
      }
    }
  },
};

function dropped(report: LifecycleReport): string[] {
  const lines: string[] = [];
  if (report.dump) {
    lines.push(`Dumped ${report.schema} to ${report.dump.file} (${report.dump.bytes} bytes, ${report.dump.pgDump})`);
  }
  const role = report.roleDropped ? ' and its role' : '';
  lines.push(
    `Dropped ${report.orgId}: schema ${report.schema}${role} dropped; its registry row is kept as DELETED (the org id is never provisioned again)`,
  );
  return lines;
}

const SAYS: Record<RetryTenantReport['outcome'], string> = {
  provisioned: 'provisioned',
  'already-active': 'already ACTIVE (nothing to do)',
  failed: 'FAILED',
  'in-progress': 'left alone: its provisioning is running right now',
};

/** `tenants:retry`: a line per tenant, then the totals. */
export const retryRun: Renderer<RetryReport> = {
  json: (report) => ({ command: 'tenants:retry', ...report }),
  text: (report) => {
    if (report.tenants.length === 0) return ['No FAILED tenant and no crashed provisioning: nothing to retry'];
    const lines = report.tenants.map((t) => {
      const line = `${t.orgId} (${t.schema}, was ${t.previousStatus}): ${SAYS[t.outcome]}`;
      if (t.outcome === 'failed') return pc.red(`${line}: ${t.error?.message ?? 'unknown error'}`);
      if (t.outcome === 'provisioned') return pc.green(`${line} (${plural(t.migrations.length, 'migration')})`);
      return t.outcome === 'in-progress' ? pc.yellow(line) : line;
    });
    const s = report.totals;
    lines.push(
      `${plural(s.total, 'tenant')}: ${s.provisioned} provisioned, ${s['already-active']} already active, ` +
        `${s.failed} failed, ${s['in-progress']} in progress (${formatDuration(report.durationMs)})`,
    );
    return lines;
  },
};
