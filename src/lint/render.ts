import pc from 'picocolors';
import type { LintFileReport, LintFinding, LintReport } from './lint.ts';

/**
 * The two renderings of a lint report: text lines for people, one JSON value for machines. They
 * match the CLI's `Renderer` shape, so the command hands them to `show`.
 */

/** `tenant/001_users.ts`: the scope says which folder, the name which file. */
function where(item: { scope: string; migration: string }): string {
  return `${item.scope}/${item.migration}`;
}

/** `file: rule (severity): explanation: detail — statement` */
export function findingLine(f: LintFinding): string {
  const severity = f.severity === 'error' ? pc.red(f.severity) : pc.yellow(f.severity);
  const phase = f.phase === 'down' ? ' [down]' : '';
  const statement = f.statement === null ? '' : ` — ${f.statement}`;
  return `${where(f)}: ${f.rule} (${severity})${phase}: ${f.explanation}: ${f.detail}${statement}`;
}

function notCheckedLine(file: LintFileReport): string {
  return pc.dim(`${where(file)}: not-checked: ${file.reason}`);
}

function count(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** The lint report as text lines (what `migrate:lint` prints). */
export function lintText(report: LintReport): string[] {
  const lines = report.findings.map(findingLine);
  for (const file of report.files) {
    if (file.status === 'not-checked') lines.push(notCheckedLine(file));
    for (const note of file.notes) lines.push(pc.dim(`${where(file)}: note: ${note}`));
  }
  const applied = report.files.filter((f) => f.status === 'already-applied');
  if (applied.length > 0)
    lines.push(
      pc.dim(`master: ${count(applied.length, 'migration')} already applied here, not run (only pending run)`),
    );
  for (const note of report.notes) lines.push(pc.dim(`note: ${note}`));
  const t = report.totals;
  const scopes = (['tenant', 'master'] as const)
    .map((scope) => [scope, report.files.filter((f) => f.scope === scope).length] as const)
    .filter(([, n]) => n > 0)
    .map(([scope, n]) => `${n} ${scope}`);
  const extra = [
    t.notChecked > 0 ? `${t.notChecked} not checked` : '',
    t.suppressed > 0 ? `${t.suppressed} disabled by comments` : '',
  ].filter(Boolean);
  const summary =
    `Linted ${scopes.length > 0 ? scopes.join(' and ') : 'no'} migrations: ` +
    `${count(t.errors, 'error')}, ${count(t.warnings, 'warning')}${extra.length > 0 ? ` (${extra.join(', ')})` : ''}`;
  lines.push(t.errors > 0 ? pc.red(summary) : t.warnings > 0 ? pc.yellow(summary) : pc.green(summary));
  return lines;
}

/** The lint report as one JSON-safe document (what `migrate:lint --json` prints). */
export function lintJson(report: LintReport): unknown {
  return { command: 'migrate:lint', ...report };
}

/** Both renderings, in the shape the CLI's `show` takes. */
export const lintRenderer = { json: lintJson, text: lintText };
