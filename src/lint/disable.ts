import { RULE_NAMES, type RuleName } from './rules.ts';

/**
 * Per-file rule switches, read from the migration file's own text:
 *
 *   // migrate-lint-disable index-not-concurrent            (.ts / .js)
 *   -- migrate-lint-disable schema-qualified, search-path   (.sql)
 *   // migrate-lint-disable index-not-concurrent -- built while the table is still empty
 *
 * Anywhere in the file, any number of lines; names separated by spaces or commas; text after a
 * ` -- ` is a free-form reason. Either comment marker works in either kind of file. This reads
 * comments, not SQL: the rules themselves only ever look at parse trees.
 */

export const DISABLE_DIRECTIVE = 'migrate-lint-disable';

export interface Disables {
  readonly rules: readonly RuleName[];
  /** Names in a directive that are not rules (a typo would otherwise silently disable nothing). */
  readonly unknown: readonly string[];
}

const KNOWN = new Set<string>(RULE_NAMES);

export function readDisables(fileText: string): Disables {
  const rules = new Set<RuleName>();
  const unknown = new Set<string>();
  for (const line of fileText.split(/\r?\n/)) {
    const comment = commentOf(line);
    if (comment === undefined || !comment.startsWith(DISABLE_DIRECTIVE)) continue;
    const list = comment.slice(DISABLE_DIRECTIVE.length).split(' -- ')[0] ?? '';
    for (const name of list.replace(/\*\/.*$/, '').split(/[\s,]+/)) {
      if (name === '') continue;
      if (KNOWN.has(name)) rules.add(name as RuleName);
      else unknown.add(name);
    }
  }
  return { rules: [...rules], unknown: [...unknown] };
}

/** The text of a line comment (`//`, `--`, or a one-line `/* … *\/`), trimmed; undefined if the line has none. */
function commentOf(line: string): string | undefined {
  const trimmed = line.trim();
  for (const marker of ['//', '--', '/*']) {
    if (trimmed.startsWith(marker)) return trimmed.slice(marker.length).trim();
  }
  return undefined;
}
