import { describe, expect, it } from 'vitest';
import { UsageError } from '../../src/errors.ts';
import { checkedOrgIds, mapFormatOf, parseOrgMap } from '../../src/tenants/adopt.ts';

const values = (text: string, format: 'json' | 'lines' = 'lines'): unknown[] =>
  parseOrgMap(text, format).map((entry) => entry.value);

describe('mapping files of tenants:adopt', () => {
  it('reads one org id a line: the first CSV field, trimmed and unquoted; skips blanks, comments and a header', () => {
    const text = '\uFEFForg_id,name\r\n org_a , Acme\r\n\r\n# a comment\n"org_b","Beta, Inc"\norg_c\n';
    expect(values(text)).toEqual(['org_a', 'org_b', 'org_c']);
    expect(parseOrgMap('org_a\n\norg_b', 'lines').map((e) => e.where)).toEqual(['line 1', 'line 3']);
  });

  it('skips only a first line that names the column', () => {
    expect(values('clerk_org_id\norg_a\norg_id\n')).toEqual(['org_a', 'org_id']);
    expect(values('organizationId\norg_a')).toEqual(['org_a']);
  });

  it('reads a JSON array, and refuses other JSON with one line', () => {
    expect(values('["org_a", "org_b"]', 'json')).toEqual(['org_a', 'org_b']);
    expect(() => parseOrgMap('{"org": "a"}', 'json', 'Map file m.json')).toThrow(
      'Map file m.json: expected a JSON array of org ids',
    );
    expect(() => parseOrgMap('["org_a",', 'json', 'm.json')).toThrow(/^m\.json: not valid JSON \(/);
  });

  it('chooses the format by extension', () => {
    expect(mapFormatOf('orgs.JSON')).toBe('json');
    expect(mapFormatOf('/x/orgs.csv')).toBe('lines');
    expect(mapFormatOf('orgs.txt')).toBe('lines');
    expect(() => mapFormatOf('orgs.xlsx')).toThrow(UsageError);
  });
});

describe('checkedOrgIds', () => {
  it('keeps the first of repeated org ids, in order', () => {
    const entries = ['org_b', 'org_a', 'org_b'].map((value, i) => ({ value, where: `line ${i + 1}` }));
    expect(checkedOrgIds(entries, 'm.csv')).toEqual(['org_b', 'org_a']);
  });

  it('names every bad entry in one line (the first three, then a count), as a UsageError with exit 2', () => {
    const entries = ['org ok?', 'org_fine', '', 'x'.repeat(65), 42, 'a/b'].map((value, i) => ({
      value,
      where: `line ${i + 1}`,
    }));
    let error: unknown;
    try {
      checkedOrgIds(entries, 'Map file m.csv');
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(UsageError);
    expect((error as UsageError).exitCode).toBe(2);
    const message = (error as Error).message;
    expect(message).toMatch(/^Map file m\.csv: line 1: Invalid org id "org ok\?": only letters/);
    expect(message).toContain('; line 3: Invalid org id: it is empty');
    expect(message).toContain('; line 4: Invalid org id: 65 characters, at most 64 allowed');
    expect(message).toMatch(/ \(and 2 more\)$/);
    expect(message).not.toContain('\n');
  });

  it('refuses a list with no org ids', () => {
    expect(() => checkedOrgIds([], 'Map file e.csv')).toThrow('Map file e.csv: no org ids in it');
  });
});
