/**
 * Plain `.sql` migration files, in dbmate's convention:
 *
 *   -- migrate:up
 *   create table users (id bigint primary key, email text not null);
 *
 *   -- migrate:down
 *   drop table users;
 *
 * - A marker is a line of its own starting with `-- migrate:up` or `-- migrate:down` (space after
 *   `--` optional). Each appears at most once, up before down; above `-- migrate:up` only
 *   comments and blank lines.
 * - A file without markers is all up and has no down: rolling it back fails, as it does for a
 *   module that exports no `down`.
 * - `-- migrate:up transaction:false` (or `-- migrate:down transaction:false`) runs that section
 *   outside a transaction, statement by statement, for `CREATE INDEX CONCURRENTLY` and the like;
 *   the migration then has `transaction: false`. A section without the option still runs
 *   atomically: it is sent as one query, which PostgreSQL runs as one implicit transaction.
 *   Any other option on a marker is refused, so that a typo never silently means "in a transaction".
 *
 * This file is pure: it reads text and never touches a database.
 */

/** A problem with a SQL file's layout; `line` is 1-based. The source adds the file name. */
export class SqlFileError extends Error {
  readonly line: number | undefined;
  constructor(message: string, line?: number) {
    super(line === undefined ? message : `line ${line}: ${message}`);
    this.name = 'SqlFileError';
    this.line = line;
  }
}

/** One direction of a SQL file. */
export interface SqlSection {
  /** The SQL as written, from the line after the marker (or the whole file) up to the next marker. */
  readonly text: string;
  /** The 1-based line of the file on which `text` starts. */
  readonly line: number;
  /** False when the marker says `transaction:false`. */
  readonly transaction: boolean;
}

/** A SQL file cut into its directions. `down` is absent when the file has no `-- migrate:down`. */
export interface SqlFile {
  readonly up: SqlSection;
  readonly down: SqlSection | undefined;
}

/** One statement of a section, as PostgreSQL's own parser delimits it. */
export interface SqlStatement {
  readonly text: string;
  /** The 1-based line of the file on which `text` starts. */
  readonly line: number;
}

interface Marker {
  readonly direction: 'up' | 'down';
  readonly line: number;
  /** Offset of the marker line's first character. */
  readonly start: number;
  /** Offset just past the marker line (after its line break). */
  readonly end: number;
  readonly transaction: boolean;
}

const MARKER = /^--[ \t]*migrate:(up|down)(?=[ \t\r]|$)([^\n]*)$/gm;

/** Cuts a SQL file into its up and down sections; throws SqlFileError saying what to change. */
export function parseSqlFile(content: string): SqlFile {
  if (content.trim() === '') {
    throw new SqlFileError('the file is empty: write its SQL, under "-- migrate:up" and "-- migrate:down" markers');
  }
  const markers = findMarkers(content);
  if (markers.length === 0) {
    return { up: { text: content, line: 1, transaction: true }, down: undefined };
  }
  const up = markers.find((m) => m.direction === 'up');
  const down = markers.find((m) => m.direction === 'down');
  if (!up) {
    throw new SqlFileError(
      '"-- migrate:down" without "-- migrate:up": add "-- migrate:up" above the up SQL',
      down?.line,
    );
  }
  if (down && down.start < up.start) {
    throw new SqlFileError(
      `"-- migrate:down" comes before "-- migrate:up" (line ${up.line}): put the up section first`,
      down.line,
    );
  }
  const stray = firstCodeLine(content.slice(0, up.start), 1);
  if (stray !== undefined) {
    throw new SqlFileError('SQL above "-- migrate:up": move it below the marker', stray);
  }
  const upEnd = down ? down.start : content.length;
  return {
    up: { text: content.slice(up.end, upEnd), line: up.line + 1, transaction: up.transaction },
    down: down && { text: content.slice(down.end), line: down.line + 1, transaction: down.transaction },
  };
}

function findMarkers(content: string): Marker[] {
  const markers: Marker[] = [];
  for (const match of content.matchAll(MARKER)) {
    const start = match.index;
    const direction = match[1] as 'up' | 'down';
    const line = lineAt(content, start);
    const earlier = markers.find((m) => m.direction === direction);
    if (earlier) {
      throw new SqlFileError(`a second "-- migrate:${direction}" (the first is on line ${earlier.line})`, line);
    }
    const lineEnd = start + match[0].length;
    markers.push({
      direction,
      line,
      start,
      end: content[lineEnd] === '\n' ? lineEnd + 1 : lineEnd,
      transaction: transactionOption(match[2] ?? '', direction, line),
    });
  }
  return markers;
}

/** dbmate's marker options are `key:value` words; the one we know is `transaction:false`. */
function transactionOption(options: string, direction: 'up' | 'down', line: number): boolean {
  let transaction = true;
  for (const word of options.trim().split(/\s+/).filter(Boolean)) {
    if (word === 'transaction:false') transaction = false;
    else if (word !== 'transaction:true') {
      throw new SqlFileError(
        `unknown option "${word}" on "-- migrate:${direction}": the one option is "transaction:false"`,
        line,
      );
    }
  }
  return transaction;
}

/** The 1-based line of a character offset. */
export function lineAt(text: string, offset: number, firstLine = 1): number {
  let line = firstLine;
  for (let i = text.indexOf('\n'); i !== -1 && i < offset; i = text.indexOf('\n', i + 1)) line++;
  return line;
}

/** The first line holding something other than blanks and `--` comments, if any. */
export function firstCodeLine(text: string, firstLine: number): number | undefined {
  const index = text.split('\n').findIndex((l) => l.trim() !== '' && !l.trim().startsWith('--'));
  return index === -1 ? undefined : firstLine + index;
}

interface ParsedStatement {
  stmt_location?: number;
  stmt_len?: number;
}

/**
 * Splits a section into statements with PostgreSQL's own parser (libpg-query), so that
 * semicolons in strings, dollar-quoted bodies and comments are never mistaken for ends. Each
 * statement keeps the comments and blank lines before it. A section of only comments has no
 * statements. A syntax error is a SqlFileError with its line in the file.
 */
export async function splitStatements(section: SqlSection): Promise<SqlStatement[]> {
  if (section.text.trim() === '') return [];
  // Loaded on first use: the WASM parser costs a moment, and only `transaction:false` sections need it.
  const { parse } = await import('libpg-query');
  let stmts: ParsedStatement[];
  try {
    stmts = ((await parse(section.text)) as { stmts?: ParsedStatement[] }).stmts ?? [];
  } catch (error) {
    const cursor = (error as { sqlDetails?: { cursorPosition?: number } }).sqlDetails?.cursorPosition;
    const line = cursor === undefined || cursor < 0 ? undefined : lineAt(section.text, cursor, section.line);
    throw new SqlFileError((error as Error).message, line);
  }
  // The parser counts in bytes of UTF-8; the text and its line numbers are counted in characters.
  const bytes = Buffer.from(section.text, 'utf8');
  return stmts.map((s) => {
    const from = s.stmt_location ?? 0;
    const to = s.stmt_len ? from + s.stmt_len : bytes.length; // a length of 0 means "to the end"
    const before = bytes.subarray(0, from).toString('utf8').length;
    return { text: bytes.subarray(from, to).toString('utf8'), line: lineAt(section.text, before, section.line) };
  });
}
