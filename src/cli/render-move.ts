import pc from 'picocolors';
import type { DropSourceReport } from '../provisioning/drop-source.ts';
import type { MoveReport } from '../provisioning/move.ts';
import { formatDuration, type Renderer } from './render.ts';

/** `tenant:move`: one line per step with its time, then the outcome and what to do next. */
export const moveRun: Renderer<MoveReport> = {
  json: (report) => ({ command: 'tenant:move', ...report }),
  text: (report) => {
    const who = `${report.orgId} (${report.schema})`;
    const lines = report.steps.map((s) => {
      const line = `  ${s.ok ? '✓' : '✗'} ${s.step.padEnd(14)} ${formatDuration(s.durationMs).padStart(8)}  ${s.detail}`;
      return s.ok ? line : pc.red(line);
    });
    const took = formatDuration(report.durationMs);
    if (report.outcome === 'failed') {
      lines.push(
        pc.red(
          `Moving ${who} from ${report.from} to ${report.to} FAILED at ${report.error?.step}: ${report.error?.message}`,
        ),
      );
      const c = report.cleanup;
      if (c) {
        const state = c.reverted ? `ACTIVE on ${report.from}, served from there` : 'left MOVING';
        lines.push(
          `  ${state}; ${c.targetDropped ? `the copy on ${report.to} was dropped` : `nothing restored on ${report.to} to drop`}`,
        );
        for (const problem of c.problems) lines.push(pc.yellow(`  ${problem}`));
      }
      return lines;
    }
    lines.push(pc.green(`Moved ${who} from ${report.from} to ${report.to} (${took})`));
    if (report.sourceDropped) lines.push(`  the schema on ${report.from} was dropped`);
    else if (report.error) {
      lines.push(pc.yellow(`  dropping the schema on ${report.from} failed: ${report.error.message}`));
      lines.push(pc.dim(`  drop it later with: pnpm tenant:drop-source ${report.orgId} --server ${report.from}`));
    } else {
      lines.push(
        pc.dim(
          `  the old copy is kept on ${report.from}; drop it with: pnpm tenant:drop-source ${report.orgId} --server ${report.from}`,
        ),
      );
    }
    return lines;
  },
};

/** `tenant:drop-source`: one line. */
export const dropSourceRun: Renderer<DropSourceReport> = {
  json: (report) => ({ command: 'tenant:drop-source', ...report }),
  text: (report) =>
    report.outcome === 'absent'
      ? [`${report.orgId}: server ${report.server} has no schema ${report.schema} (nothing to drop)`]
      : [
          `Dropped the old copy of ${report.orgId}: schema ${report.schema}${report.roleDropped ? ' and its role' : ''} on ${report.server} (${formatDuration(report.durationMs)})`,
        ],
};
