import { describe, expect, it } from 'vitest';
import { networkErrorCode, SQLSTATE, sqlState } from '../../src/db/pg-errors.ts';

/** An Error with a `code`, as node-postgres and Node's net module make them. */
function withCode(code: unknown, message = 'failed', extra: Record<string, unknown> = {}): Error {
  return Object.assign(new Error(message), { code, ...extra });
}

describe('sqlState', () => {
  it('sqlState ignores Node system error codes such as EPIPE', () => {
    expect(sqlState({ code: '23505', severity: 'ERROR' })).toBe('23505');
    expect(sqlState({ code: '42P01' })).toBe('42P01');
    expect(sqlState({ code: 'EPIPE' })).toBeUndefined();
  });

  it.each(['23505', '42P01', '3F000', '0A000', '55P03', '57P01', '28P01', '22P02', 'P0001', 'XX000', 'HV000'])(
    'reads the SQLSTATE %s of a driver error',
    (code) => {
      expect(sqlState(withCode(code, 'from the server', { severity: 'ERROR' }))).toBe(code);
    },
  );

  it.each([
    ['undefined', undefined],
    ['null', null],
    ['a string', '23505'],
    ['a number', 23505],
    ['an error without a code', new Error('plain')],
    ['a numeric code', withCode(23505)],
    ['a four-character code', withCode('2350')],
    ['a six-character code', withCode('235050')],
    ['a lower-case code', withCode('42p01')],
    ['ECONNREFUSED', withCode('ECONNREFUSED')],
    ['ENOENT', withCode('ENOENT')],
    ['a toolkit code', withCode('E_CONFIG')],
  ])('is undefined for %s', (_label, error) => {
    expect(sqlState(error)).toBeUndefined();
  });
});

describe('SQLSTATE', () => {
  it('names the codes PostgreSQL documents', () => {
    expect(SQLSTATE).toMatchObject({
      UNIQUE_VIOLATION: '23505',
      UNDEFINED_TABLE: '42P01',
      INVALID_SCHEMA_NAME: '3F000',
      DUPLICATE_SCHEMA: '42P06',
      DUPLICATE_OBJECT: '42710',
      LOCK_NOT_AVAILABLE: '55P03',
      QUERY_CANCELED: '57014',
      ADMIN_SHUTDOWN: '57P01',
      INVALID_PASSWORD: '28P01',
      INVALID_AUTHORIZATION: '28000',
      INVALID_CATALOG_NAME: '3D000',
      FEATURE_NOT_SUPPORTED: '0A000',
      UNDEFINED_FILE: '58P01',
      INSUFFICIENT_PRIVILEGE: '42501',
    });
  });
});

describe('networkErrorCode', () => {
  it.each(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'EHOSTUNREACH', 'EPIPE'])(
    'reads %s from the error',
    (code) => {
      expect(networkErrorCode(withCode(code))).toBe(code);
    },
  );

  it('finds the code in the cause chain', () => {
    const root = withCode('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:5432');
    expect(networkErrorCode(new Error('wrapped', { cause: root }))).toBe('ECONNREFUSED');
    expect(networkErrorCode(new Error('outer', { cause: new Error('middle', { cause: root }) }))).toBe('ECONNREFUSED');
  });

  it('takes the outermost network code', () => {
    const error = withCode('ETIMEDOUT', 'outer', { cause: withCode('ECONNRESET') });
    expect(networkErrorCode(error)).toBe('ETIMEDOUT');
  });

  it.each([
    ['undefined', undefined],
    ['null', null],
    ['an error without a code', new Error('plain')],
    ['a SQLSTATE', withCode('23505')],
    ['a SQLSTATE with letters', withCode('42P01')],
    ['a toolkit code', withCode('E_CONNECTION')],
    ['a lower-case code', withCode('econnrefused')],
    ['a numeric code', withCode(111)],
  ])('is undefined for %s', (_label, error) => {
    expect(networkErrorCode(error)).toBeUndefined();
  });

  it('stops on a cause that points back at itself', () => {
    const error = new Error('loop') as Error & { cause?: unknown };
    error.cause = error;
    expect(networkErrorCode(error)).toBeUndefined();
  });
});
