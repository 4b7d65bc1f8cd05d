import type { Knex } from 'knex';
import { firstCodeLine, lineAt, parseSqlFile, type SqlSection, splitStatements } from './sql-file.ts';

/** What a `.sql` file becomes: the parts of a Migration that come from its content. */
export interface SqlMigration {
  /** False when either section is marked `transaction:false`. */
  readonly transaction: boolean;
  readonly up: (knex: Knex) => Promise<void>;
  /** Absent when the file has no `-- migrate:down` section. */
  readonly down: ((knex: Knex) => Promise<void>) | undefined;
}

/** A statement of a SQL migration failed: `code` is PostgreSQL's SQLSTATE, `cause` the driver's error. */
export class SqlStatementError extends Error {
  readonly code: string | undefined;
  readonly line: number | undefined;
  constructor(message: string, options: { code: string | undefined; line: number | undefined; cause: unknown }) {
    super(message, { cause: options.cause });
    this.name = 'SqlStatementError';
    this.code = options.code;
    this.line = options.line;
  }
}

/** Text sent to the server in one query: a single statement, or a whole section. */
export interface Batch {
  readonly text: string;
  readonly line: number;
  readonly whole: boolean;
}

/**
 * Builds a SQL file's up and down (convention in sql-file.ts). A `transaction:false` section is
 * split into statements now, so that its syntax errors are refused while loading, before any
 * schema is touched; other sections are left for the server to judge (libpg-query knows
 * PostgreSQL 17's grammar, a newer server knows more). Throws SqlFileError.
 */
export async function sqlMigration(content: string): Promise<SqlMigration> {
  const file = parseSqlFile(content);
  const up = await batchesOf(file.up);
  const down = file.down && (await batchesOf(file.down));
  return {
    transaction: file.up.transaction && file.down?.transaction !== false,
    up: (knex) => runBatches(knex, up),
    down: down && ((knex) => runBatches(knex, down)),
  };
}

async function batchesOf(section: SqlSection): Promise<Batch[]> {
  if (!section.transaction) {
    // Several statements in one simple query run as one implicit transaction, where
    // CREATE INDEX CONCURRENTLY, VACUUM or ALTER TYPE … ADD VALUE (before 12) are refused:
    // send them one by one. A failure leaves the statements before it applied.
    return (await splitStatements(section)).map((s) => ({ ...s, whole: false }));
  }
  return section.text.trim() === '' ? [] : [{ text: section.text, line: section.line, whole: true }];
}

async function runBatches(knex: Knex, batches: readonly Batch[]): Promise<void> {
  for (const batch of batches) await runBatch(knex, batch);
}

/**
 * Runs SQL exactly as written on the connection or transaction the runner hands in. Knex turns
 * every `?` of a raw query into a `$n` parameter, bindings or not (a `'?'` literal, jsonb's `?`
 * operator), so the driver is given the text itself through the query's driver options (`text`
 * replaces the SQL Knex compiled); with no values, node-postgres uses the simple query protocol,
 * which runs several statements in one query. Knex still sees the statement (with each `?`
 * escaped) for its `query` event, so SQL logs show what runs.
 */
export async function runBatch(knex: Knex, batch: Batch): Promise<unknown> {
  const shown = batch.text.replace(/(\\*)\?/g, (mark, slashes: string) =>
    slashes.length % 2 === 1 ? mark : `${slashes}\\?`,
  );
  try {
    // The driver's result (exported for `tenants:run`, which reports the rows of the last statement).
    return await knex.raw(shown).options({ text: batch.text });
  } catch (error) {
    throw statementError(error, batch, knexPrefix(knex, shown));
  }
}

/** What Knex puts before a driver's message (`<sql> - `): the SQL as it compiled it. */
function knexPrefix(knex: Knex, shown: string): string | undefined {
  const client = knex.client as { positionBindings?: (sql: string) => string } | undefined;
  return typeof client?.positionBindings === 'function' ? `${client.positionBindings(shown)} - ` : undefined;
}

/** The server's message (without the SQL Knex prefixes), with the line of the file it points at. */
function statementError(error: unknown, batch: Batch, prefix: string | undefined): SqlStatementError {
  const raw = error instanceof Error ? error.message : String(error);
  const message = prefix !== undefined && raw.startsWith(prefix) ? raw.slice(prefix.length) : raw;
  const details = error as { code?: unknown; position?: unknown } | null;
  // `position` is PostgreSQL's 1-based character offset into the text sent.
  const position = Number(details?.position);
  let line: number | undefined;
  let where: string;
  if (Number.isInteger(position) && position > 0) {
    line = lineAt(batch.text, position - 1, batch.line);
    where = `line ${line}`;
  } else if (batch.whole) {
    // PostgreSQL does not say which statement of a multi-statement query failed.
    const first = firstCodeLine(batch.text, batch.line) ?? batch.line;
    const last = lineAt(batch.text, batch.text.trimEnd().length - 1, batch.line);
    where = first === last ? `line ${first}` : `lines ${first}-${last}`;
    if (first === last) line = first;
  } else {
    line = firstCodeLine(batch.text, batch.line) ?? batch.line;
    where = `line ${line}`;
  }
  const code = typeof details?.code === 'string' ? details.code : undefined;
  return new SqlStatementError(`${where}: ${message.split('\n')[0]}`, { code, line, cause: error });
}
