import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { askToType, confirmByTyping, NotConfirmedError } from '../../src/cli/confirm.ts';
import { choosePgDump, PgDumpUnavailableError } from '../../src/db/pg-dump.ts';
import { UsageError } from '../../src/errors.ts';

function io(answer: string | null): { input: PassThrough; output: PassThrough; asked: () => string } {
  const input = new PassThrough();
  const output = new PassThrough();
  let asked = '';
  output.on('data', (d) => (asked += d));
  if (answer === null) input.end();
  else input.end(`${answer}\n`);
  return { input, output, asked: () => asked };
}

describe('tenant:drop asks for the org id to be typed again', () => {
  it('goes on only when exactly the org id is typed (surrounding blanks aside)', async () => {
    const ok = io('  org_a ');
    await askToType(ok, 'org_a', 'org_a (schema tid_x)', 'Type the org id: ');
    expect(ok.asked()).toBe('Type the org id: ');
    await expect(askToType(io('org_b'), 'org_a', 'org_a', '? ')).rejects.toBeInstanceOf(NotConfirmedError);
    await expect(askToType(io(''), 'org_a', 'org_a', '? ')).rejects.toBeInstanceOf(NotConfirmedError);
    // Ctrl-D: no answer is no confirmation.
    await expect(askToType(io(null), 'org_a', 'org_a', '? ')).rejects.toBeInstanceOf(NotConfirmedError);
  });

  it('off a terminal it asks for --yes instead of waiting for an answer', async () => {
    await expect(confirmByTyping(io('org_a'), 'org_a', 'org_a', '? ')).rejects.toBeInstanceOf(UsageError);
  });
});

describe('choosing pg_dump', () => {
  const tools = [
    { path: '/usr/bin/pg_dump', major: 15 },
    { path: '/usr/lib/postgresql/16/bin/pg_dump', major: 16 },
    { path: '/usr/lib/postgresql/17/bin/pg_dump', major: 17 },
  ];

  it('takes the one on PATH when it is new enough, else the newest under /usr/lib/postgresql', () => {
    expect(choosePgDump(tools, 15).path).toBe('/usr/bin/pg_dump');
    expect(choosePgDump(tools, 16).path).toBe('/usr/lib/postgresql/17/bin/pg_dump');
  });

  it('says what is missing: none installed, or all older than the server', () => {
    expect(() => choosePgDump([], 15)).toThrow(/pg_dump is not installed/);
    expect(() => choosePgDump(tools, 18)).toThrow(PgDumpUnavailableError);
    expect(() => choosePgDump(tools, 18)).toThrow(/older than the server \(PostgreSQL 18\)/);
  });
});
