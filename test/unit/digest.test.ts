import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { type AppliedMigration, appliedAfter, digestOf } from '../../src/migrations/plan.ts';
import { checksumOf } from '../../src/migrations/source.ts';

function md5(text: string): string {
  return createHash('md5').update(Buffer.from(text, 'utf8')).digest('hex');
}

function sha256(text: string): string {
  return createHash('sha256').update(Buffer.from(text, 'utf8')).digest('hex');
}

/** Rows as a tracking table holds them. */
function rows(...names: string[]): AppliedMigration[] {
  return names.map((name, i) => ({ name, batch: i + 1 }));
}

describe('digestOf', () => {
  it('is md5 of the names sorted and joined by newlines', () => {
    expect(digestOf(['002_settings.ts', '001_users.ts'])).toBe(md5('001_users.ts\n002_settings.ts'));
    expect(digestOf(['c.ts', 'a.ts', 'b.ts'])).toBe(md5('a.ts\nb.ts\nc.ts'));
  });

  it('sorts by code unit, as Knex orders file names, not by locale', () => {
    // Locale order would put a.ts first; code-unit order puts the capital first.
    expect(digestOf(['a.ts', 'B.ts'])).toBe(md5('B.ts\na.ts'));
    expect(digestOf(['10_x.ts', '9_y.ts', '010_z.ts'])).toBe(md5('010_z.ts\n10_x.ts\n9_y.ts'));
  });

  it('does not depend on order', () => {
    const names = ['001_a.ts', '002_b.ts', '003_c.ts', '004_d.ts'];
    const expected = md5(names.join('\n'));
    expect(digestOf([...names].reverse())).toBe(expected);
    expect(digestOf(['003_c.ts', '001_a.ts', '004_d.ts', '002_b.ts'])).toBe(expected);
  });

  it('takes any iterable: a Set, a generator', () => {
    const expected = md5('001_a.ts\n002_b.ts');
    expect(digestOf(new Set(['002_b.ts', '001_a.ts']))).toBe(expected);
    function* names() {
      yield '002_b.ts';
      yield '001_a.ts';
    }
    expect(digestOf(names())).toBe(expected);
  });

  it('of no names is md5 of the empty string', () => {
    expect(digestOf([])).toBe('d41d8cd98f00b204e9800998ecf8427e');
    expect(digestOf([])).toBe(md5(''));
  });

  it('differs when a name is added, removed or renamed', () => {
    const base = digestOf(['001_a.ts', '002_b.ts']);
    expect(digestOf(['001_a.ts', '002_b.ts', '003_c.ts'])).not.toBe(base);
    expect(digestOf(['001_a.ts'])).not.toBe(base);
    expect(digestOf(['001_a.ts', '002_b.js'])).not.toBe(base);
  });

  it('does not reorder the array it is given', () => {
    const names = ['b.ts', 'a.ts'];
    digestOf(names);
    expect(names).toEqual(['b.ts', 'a.ts']);
  });
});

describe('appliedAfter', () => {
  it('adds what ran up', () => {
    const after = appliedAfter(rows('001_a.ts'), ['002_b.ts', '003_c.ts'], 'up');
    expect([...after].sort()).toEqual(['001_a.ts', '002_b.ts', '003_c.ts']);
  });

  it('removes what ran down', () => {
    const after = appliedAfter(rows('001_a.ts', '002_b.ts', '003_c.ts'), ['003_c.ts', '002_b.ts'], 'down');
    expect(after).toEqual(['001_a.ts']);
  });

  it('lists each name once, whatever repeats', () => {
    const after = appliedAfter(rows('001_a.ts', '001_a.ts'), ['001_a.ts', '002_b.ts', '002_b.ts'], 'up');
    expect([...after].sort()).toEqual(['001_a.ts', '002_b.ts']);
  });

  it('ignores a name going down that was not applied', () => {
    expect(appliedAfter(rows('001_a.ts'), ['009_z.ts'], 'down')).toEqual(['001_a.ts']);
  });

  it('with nothing run is the applied set, and nothing applied going down is empty', () => {
    expect(appliedAfter(rows('001_a.ts', '002_b.ts'), [], 'up')).toEqual(['001_a.ts', '002_b.ts']);
    expect(appliedAfter([], ['001_a.ts'], 'down')).toEqual([]);
  });

  it('does not change its inputs', () => {
    const applied = rows('001_a.ts');
    const ran = ['002_b.ts'];
    appliedAfter(applied, ran, 'up');
    expect(applied).toEqual([{ name: '001_a.ts', batch: 1 }]);
    expect(ran).toEqual(['002_b.ts']);
  });

  it('gives the digest of the folder after migrating everything up', () => {
    const folder = ['001_a.ts', '002_b.ts', '003_c.ts'];
    const after = appliedAfter(rows('001_a.ts'), ['002_b.ts', '003_c.ts'], 'up');
    expect(digestOf(after)).toBe(md5(folder.join('\n')));
  });
});

describe('checksumOf', () => {
  it('is sha256 of the content', () => {
    const content = 'export async function up() {}\n';
    expect(checksumOf(content)).toBe(sha256(content));
    expect(checksumOf('')).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });

  it('hashes the UTF-8 bytes', () => {
    expect(checksumOf('-- café ünïcode ✓\n')).toBe(sha256('-- café ünïcode ✓\n'));
  });

  it('normalises CRLF to LF, so a Windows checkout gives the same checksum', () => {
    const lf = 'export async function up(knex) {\n  await knex.raw("select 1");\n}\n';
    const crlf = lf.replace(/\n/g, '\r\n');
    expect(crlf).not.toBe(lf);
    expect(checksumOf(crlf)).toBe(sha256(lf));
    expect(checksumOf('line 1\r\nline 2\nline 3\r\n')).toBe(sha256('line 1\nline 2\nline 3\n'));
  });

  it('changes when the content changes', () => {
    expect(checksumOf('a\nb\n')).not.toBe(checksumOf('a\nb'));
    expect(checksumOf('a\nb\n')).not.toBe(checksumOf('a\n\nb\n'));
    expect(checksumOf('select 1')).not.toBe(checksumOf('select 2'));
  });
});
