import { describe, expect, it } from 'vitest';
import { quoteIdent, tenantSearchPath } from '../../src/db/identifiers.ts';

/** Reads a quoted identifier back as PostgreSQL does: strip the outer quotes, undouble the inner ones. */
function unquote(quoted: string): string {
  expect(quoted.startsWith('"') && quoted.endsWith('"') && quoted.length >= 2).toBe(true);
  const inner = quoted.slice(1, -1);
  // Inside, every double quote must come in a pair, or the identifier would end early.
  expect(inner.replace(/""/g, '')).not.toContain('"');
  return inner.replace(/""/g, '"');
}

describe('quoteIdent', () => {
  it('wraps a plain name in double quotes', () => {
    expect(quoteIdent('tid_cf4116b064')).toBe('"tid_cf4116b064"');
    expect(quoteIdent('public')).toBe('"public"');
  });

  it('keeps case and spaces as they are', () => {
    expect(quoteIdent('Mixed Case')).toBe('"Mixed Case"');
  });

  it('doubles embedded double quotes', () => {
    expect(quoteIdent('a"b')).toBe('"a""b"');
    expect(quoteIdent('"')).toBe('""""');
    expect(quoteIdent('""')).toBe('""""""');
    expect(quoteIdent('x"; drop schema public; --')).toBe('"x""; drop schema public; --"');
  });

  it('leaves single quotes, backslashes and commas alone', () => {
    expect(quoteIdent("o'brien")).toBe('"o\'brien"');
    expect(quoteIdent('a\\b')).toBe('"a\\b"');
    expect(quoteIdent('a, public')).toBe('"a, public"');
  });

  it.each([
    'tid_cf4116b064',
    'a"b',
    '"leading',
    'trailing"',
    '"""',
    'x"; drop schema public; --',
    'a, "b"',
    'ünï "côdé"',
  ])('reads back as %j', (name) => {
    expect(unquote(quoteIdent(name))).toBe(name);
  });

  it('refuses a NUL byte', () => {
    expect(() => quoteIdent('a\u0000b')).toThrow(/NUL/);
    expect(() => quoteIdent('\u0000')).toThrow(/NUL/);
  });
});

describe('tenantSearchPath', () => {
  it('puts the quoted tenant schema first and public after it', () => {
    expect(tenantSearchPath('tid_cf4116b064')).toBe('"tid_cf4116b064", public');
  });

  it('quotes the schema, doubling its quotes, so it cannot add schemas to the path', () => {
    expect(tenantSearchPath('a", "evil')).toBe('"a"", ""evil", public');
    expect(tenantSearchPath('x, pg_catalog')).toBe('"x, pg_catalog", public');
  });

  it('refuses a NUL byte', () => {
    expect(() => tenantSearchPath('tid_\u0000')).toThrow(/NUL/);
  });
});
