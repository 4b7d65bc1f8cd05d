import { describe, expect, it } from 'vitest';
import { parseSqlFile, SqlFileError, splitStatements } from '../../src/migrations/sql-file.ts';
import { sqlMigration } from '../../src/migrations/sql-migration.ts';

/** The SqlFileError parseSqlFile throws for a text, or a failed expectation. */
function refusal(content: string): SqlFileError {
  try {
    parseSqlFile(content);
  } catch (error) {
    expect(error).toBeInstanceOf(SqlFileError);
    return error as SqlFileError;
  }
  throw new Error(`parseSqlFile accepted ${JSON.stringify(content)}`);
}

describe('parseSqlFile: dbmate markers', () => {
  it('cuts the file at -- migrate:up and -- migrate:down, keeping each section as written with its first line', () => {
    const file = parseSqlFile(
      '-- Users and their email.\n\n-- migrate:up\ncreate table users (id int);\n\n-- migrate:down\ndrop table users;\n',
    );
    expect(file.up).toEqual({ text: 'create table users (id int);\n\n', line: 4, transaction: true });
    expect(file.down).toEqual({ text: 'drop table users;\n', line: 7, transaction: true });
  });

  it('a file without markers is all up and has no down', () => {
    const content = 'create table users (id int);\ninsert into users values (1);\n';
    expect(parseSqlFile(content)).toEqual({ up: { text: content, line: 1, transaction: true }, down: undefined });
  });

  it('-- migrate:up alone gives an up and no down', () => {
    const file = parseSqlFile('-- migrate:up\nselect 1;\n');
    expect(file.up).toMatchObject({ text: 'select 1;\n', line: 2 });
    expect(file.down).toBeUndefined();
  });

  it('transaction:false is read per section; transaction:true is the default said aloud', () => {
    const file = parseSqlFile(
      '-- migrate:up transaction:false\ncreate index concurrently i on t (c);\n-- migrate:down transaction:true\ndrop index i;\n',
    );
    expect(file.up.transaction).toBe(false);
    expect(file.down?.transaction).toBe(true);
  });

  it('markers need no space after --, accept CRLF line ends, and must start the line', () => {
    const file = parseSqlFile('--migrate:up\r\nselect 1;\r\n--migrate:down transaction:false\r\nselect 2;\r\n');
    expect(file.up).toEqual({ text: 'select 1;\r\n', line: 2, transaction: true });
    expect(file.down).toEqual({ text: 'select 2;\r\n', line: 4, transaction: false });
    // Indented, or words that merely begin like a marker, are SQL comments like any other.
    expect(parseSqlFile('  -- migrate:up\nselect 1;\n').up.line).toBe(1);
    expect(parseSqlFile('-- migrate:upgrade notes\nselect 1;\n').up.line).toBe(1);
  });

  it('comments and blank lines may precede -- migrate:up; SQL may not', () => {
    expect(parseSqlFile('-- a note\n\n   -- another\n-- migrate:up\nselect 1;\n').up.line).toBe(5);
    const error = refusal('set lock_timeout = 0;\n-- migrate:up\nselect 1;\n');
    expect(error.message).toBe('line 1: SQL above "-- migrate:up": move it below the marker');
    expect(error.line).toBe(1);
  });

  it('refuses a down without an up, a down before the up, and a marker given twice, saying where', () => {
    expect(refusal('-- migrate:down\ndrop table t;\n').message).toBe(
      'line 1: "-- migrate:down" without "-- migrate:up": add "-- migrate:up" above the up SQL',
    );
    expect(refusal('-- migrate:down\nselect 2;\n-- migrate:up\nselect 1;\n').message).toBe(
      'line 1: "-- migrate:down" comes before "-- migrate:up" (line 3): put the up section first',
    );
    expect(refusal('-- migrate:up\nselect 1;\n-- migrate:up\nselect 2;\n').message).toBe(
      'line 3: a second "-- migrate:up" (the first is on line 1)',
    );
  });

  it('refuses an unknown option, so that a typo never silently means "in a transaction"', () => {
    expect(refusal('-- migrate:up transaction: false\nselect 1;\n').message).toBe(
      'line 1: unknown option "transaction:" on "-- migrate:up": the one option is "transaction:false"',
    );
    expect(refusal('-- migrate:up\nselect 1;\n-- migrate:down notransaction\nselect 2;\n').line).toBe(3);
  });

  it('refuses an empty file', () => {
    expect(refusal(' \n\n').message).toMatch(/^the file is empty/);
  });
});

describe('splitStatements: PostgreSQL’s own parser', () => {
  it('splits at the semicolons that end statements, not those in strings, comments or dollar quotes', async () => {
    const section = {
      text: [
        "insert into t values ('a;b');",
        '-- a comment; with a semicolon',
        'create function f() returns int language plpgsql as $$ begin return 1; end $$;',
        '/* block; comment */ select 2',
      ].join('\n'),
      line: 10,
      transaction: false,
    };
    const statements = await splitStatements(section);
    expect(statements.map((s) => s.text.trim())).toEqual([
      "insert into t values ('a;b')",
      '-- a comment; with a semicolon\ncreate function f() returns int language plpgsql as $$ begin return 1; end $$',
      '/* block; comment */ select 2',
    ]);
    // Each statement starts where the previous one ended; its line is that of the file.
    expect(statements.map((s) => s.line)).toEqual([10, 10, 12]);
  });

  it('counts lines in characters although the parser counts bytes', async () => {
    const statements = await splitStatements({
      text: "select 'déjà vu';\nselect '日本';\nselect 3;\n",
      line: 1,
      transaction: false,
    });
    expect(statements.map((s) => s.text.trim())).toEqual(["select 'déjà vu'", "select '日本'", 'select 3']);
  });

  it('a section of comments only has no statements; a blank one neither', async () => {
    expect(await splitStatements({ text: '-- nothing yet\n', line: 1, transaction: false })).toEqual([]);
    expect(await splitStatements({ text: '\n  \n', line: 1, transaction: false })).toEqual([]);
  });

  it('a syntax error is a SqlFileError with the line of the file', async () => {
    const error = await splitStatements({
      text: 'select 1;\n\ncreate index on t (;\n',
      line: 5,
      transaction: false,
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(SqlFileError);
    expect(error).toMatchObject({ line: 7, message: 'line 7: syntax error at or near ";"' });
  });
});

describe('sqlMigration', () => {
  it('is transactional unless a section says transaction:false, and has a down only with -- migrate:down', async () => {
    expect(await sqlMigration('create table t (id int);\n')).toMatchObject({ transaction: true, down: undefined });
    const both = await sqlMigration('-- migrate:up\ncreate table t (id int);\n-- migrate:down\ndrop table t;\n');
    expect(both.transaction).toBe(true);
    expect(typeof both.down).toBe('function');
    const index = await sqlMigration(
      '-- migrate:up\ncreate table t (id int);\n-- migrate:down transaction:false\ndrop index concurrently i;\n',
    );
    expect(index.transaction).toBe(false);
  });

  it('refuses a syntax error in a transaction:false section while loading', async () => {
    await expect(sqlMigration('-- migrate:up transaction:false\ncreate index concurrently on (;\n')).rejects.toThrow(
      /^line 2: syntax error at or near/,
    );
  });
});
