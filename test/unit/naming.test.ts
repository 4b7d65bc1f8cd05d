import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ToolkitError, UsageError } from '../../src/errors.ts';
import { candidateSchemaNames, isTenantSchemaName, schemaNameFor, validateOrgId } from '../../src/tenants/naming.ts';

/** md5 hex of a string's UTF-8 bytes, computed here rather than by the code under test. */
function md5(text: string): string {
  return createHash('md5').update(Buffer.from(text, 'utf8')).digest('hex');
}

/** The error validateOrgId throws for a value, or a failed expectation. */
function refusal(value: unknown): UsageError {
  try {
    validateOrgId(value);
  } catch (error) {
    expect(error).toBeInstanceOf(UsageError);
    return error as UsageError;
  }
  throw new Error(`validateOrgId accepted ${JSON.stringify(value)}`);
}

describe('schemaNameFor', () => {
  it('is tid_ followed by the first 10 hex digits of md5(org id)', () => {
    expect(md5('default_tenant').slice(0, 10)).toBe('cf4116b064');
    expect(schemaNameFor('default_tenant')).toBe('tid_cf4116b064');
    for (const orgId of ['org_2abcDEF', 'a', 'org-with-dashes_and_underscores']) {
      expect(schemaNameFor(orgId)).toBe(`tid_${md5(orgId).slice(0, 10)}`);
    }
  });

  it('takes as many hex digits as asked, up to the whole hash', () => {
    const hash = md5('org_digits');
    expect(schemaNameFor('org_digits', 12)).toBe(`tid_${hash.slice(0, 12)}`);
    expect(schemaNameFor('org_digits', 32)).toBe(`tid_${hash}`);
    expect(schemaNameFor('org_digits', 32)).toHaveLength(36);
  });

  it('hashes the UTF-8 bytes of the id', () => {
    expect(schemaNameFor('café')).toBe(`tid_${md5('café').slice(0, 10)}`);
  });

  it('gives different org ids different names and the same id the same name', () => {
    expect(schemaNameFor('org_a')).not.toBe(schemaNameFor('org_b'));
    expect(schemaNameFor('org_a')).toBe(schemaNameFor('org_a'));
  });
});

describe('candidateSchemaNames', () => {
  const orgId = 'org_candidates';
  const hash = md5(orgId);
  const names = candidateSchemaNames(orgId);

  it('tries 10, 12, 14, … up to 32 hex digits, in that order', () => {
    const expected: string[] = [];
    for (let digits = 10; digits <= 32; digits += 2) expected.push(`tid_${hash.slice(0, digits)}`);
    expect(expected).toHaveLength(12);
    expect(names).toEqual(expected);
  });

  it('starts with the default name and ends with the whole hash', () => {
    expect(names[0]).toBe(`tid_${hash.slice(0, 10)}`);
    expect(names.at(-1)).toBe(`tid_${hash}`);
  });

  it('gives distinct names, each a prefix of the next, all recognised as tenant schemas and under 63 characters', () => {
    expect(new Set(names).size).toBe(names.length);
    for (let i = 1; i < names.length; i++) expect(names[i]!.startsWith(names[i - 1]!)).toBe(true);
    for (const name of names) {
      expect(isTenantSchemaName(name)).toBe(true);
      expect(name.length).toBeLessThanOrEqual(63);
    }
  });
});

describe('validateOrgId', () => {
  it.each(['a', '0', 'org_2abcDEFghiJKL', 'A-b_9', '-', '_', 'x'.repeat(64)])(
    'accepts %j and returns it unchanged',
    (orgId) => {
      expect(validateOrgId(orgId)).toBe(orgId);
    },
  );

  it.each([
    ['empty', ''],
    ['65 characters', 'x'.repeat(65)],
    ['a space', 'org id'],
    ['a dot', 'org.id'],
    ['a slash', 'org/id'],
    ['a quote', "org'; drop schema public; --"],
    ['a non-ASCII letter', 'ørg'],
    ['a newline', 'org\n'],
    ['a tab', '\torg'],
    ['a NUL', 'org\u0000'],
    ['a zero-width space', 'org\u200b'],
    ['a right-to-left override', 'org\u202eevil'],
  ])('refuses an id with %s, with a UsageError E_ORG_ID (exit code 2)', (_label, orgId) => {
    const error = refusal(orgId);
    expect(error).toBeInstanceOf(ToolkitError);
    expect(error.code).toBe('E_ORG_ID');
    expect(error.exitCode).toBe(2);
    expect(error.message).toMatch(/^Invalid org id/);
  });

  it.each([undefined, null, 42, {}, ['org_a']])('refuses the non-string %j', (value) => {
    expect(refusal(value).code).toBe('E_ORG_ID');
  });

  it('says when the id is empty or too long', () => {
    expect(refusal('').message).toMatch(/empty/);
    expect(refusal(undefined).message).toMatch(/empty/);
    expect(refusal('x'.repeat(65)).message).toMatch(/65 characters, at most 64/);
  });

  it('quotes the refused id in the message', () => {
    expect(refusal('org.id').message).toContain('"org.id"');
  });

  it.each([
    ['newline', '\n', '\\n'],
    ['bell', '\u0007', '\\u0007'],
    ['DEL', '\u007f', '\\u007f'],
    ['C1 control', '\u009b', '\\u009b'],
    ['left-to-right mark', '\u200e', '\\u200e'],
    ['right-to-left mark', '\u200f', '\\u200f'],
    ['right-to-left override', '\u202e', '\\u202e'],
    ['first strong isolate', '\u2068', '\\u2068'],
  ])('spells out an invisible %s in the message instead of echoing it', (_label, char, spelled) => {
    const message = refusal(`org${char}id`).message;
    expect(message).not.toContain(char);
    expect(message).toContain(`org${spelled}id`);
    expect(message.split('\n')).toHaveLength(1);
  });
});

describe('isTenantSchemaName', () => {
  const hex32 = md5('org_schema');

  it.each([
    `tid_${hex32.slice(0, 10)}`,
    `tid_${hex32.slice(0, 11)}`,
    `tid_${hex32.slice(0, 20)}`,
    `tid_${hex32}`,
    'tid_0123456789',
    'tid_abcdefabcd',
  ])('accepts %s', (name) => {
    expect(isTenantSchemaName(name)).toBe(true);
  });

  it.each([
    'public',
    'tid_',
    `tid_${hex32.slice(0, 9)}`,
    `tid_${hex32}0`,
    'tid_ABCDEF0123',
    'tid_abcdefghij',
    'TID_0123456789',
    'tid0123456789',
    'xtid_0123456789',
    ' tid_0123456789',
    'tid_0123456789 ',
    'tid_0123456789\n',
    'tid_01234-6789',
    '',
  ])('refuses %j', (name) => {
    expect(isTenantSchemaName(name)).toBe(false);
  });
});
