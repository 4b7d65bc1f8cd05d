/**
 * Bad organisation ids, through the CLI and the library. Promise under test: a clear one-line
 * error (exit 2 from the CLI, a UsageError with code E_ORG_ID from the library), and nothing
 * written: no registry row, no schema, no table.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { provisionTenant, UsageError } from '../../src/index.ts';
import {
  BASE_DIR,
  cliEnv,
  hasStack,
  publicTables,
  registryRows,
  setUpTenants,
  snapshot,
  withTk,
} from '../fixtures/rel-support/support.ts';
import { runCli } from '../support/cli.ts';
import { startEngine, type TestEngine } from '../support/engine.ts';

let engine: TestEngine;

beforeAll(async () => {
  engine = await startEngine('rel_org_ids');
  await setUpTenants(engine, BASE_DIR, ['org_existing']);
});

afterAll(async () => {
  await engine?.stop();
});

const BAD: readonly (readonly [string, string])[] = [
  ['empty', ''],
  ['whitespace', '   '],
  ['a newline', 'org_a\norg_b'],
  ['65 characters', `org_${'x'.repeat(61)}`],
  ['very long', 'o'.repeat(10_000)],
  ['SQL metacharacters', "org'; drop table public.tenants; --"],
  ['a double quote', 'org"; drop schema public cascade; --'],
  ['a NUL byte', 'org\u0000x'],
  ['unicode letters', 'org_é'],
  ['an emoji', 'org_🙂'],
  ['a right-to-left override', 'org_\u202eabc'],
  ['a path', '../../etc/passwd'],
  ['a slash', 'org/1'],
  ['a percent sign', 'org_%'],
];

/** Everything a provisioner or a run could have written. */
async function everything(): Promise<unknown> {
  return withTk(engine, BASE_DIR, async (tk) => ({
    registry: await registryRows(tk.knex),
    schemas: [...(await snapshot(tk.knex)).values()],
    public: await publicTables(tk.knex),
    namespaces: (await tk.knex.raw("select nspname from pg_namespace where nspname not like 'pg\\_%' order by 1")).rows,
  }));
}

/** Control and bidirectional-override characters: in a message they garble or disguise a terminal line. */
const UNPRINTABLE = /[\u0000-\u001f\u007f\u202a-\u202e\u2066-\u2069]/;
const LINE_BREAK = /[\n\r]/;

/** How a call failed, in comparable form. */
function outcome(error: unknown): string {
  if (!(error instanceof UsageError)) return `not a UsageError: ${String(error)}`;
  if (error.code !== 'E_ORG_ID' || error.exitCode !== 2) return `code ${error.code}, exit ${error.exitCode}`;
  if (!error.message.startsWith('Invalid org id')) return `message: ${error.message}`;
  if (LINE_BREAK.test(error.message)) return `more than one line: ${JSON.stringify(error.message)}`;
  return 'refused';
}

describe('bad org ids', () => {
  it('library: provisionTenant, migrateTenants and rollbackTenants refuse each with a UsageError, writing nothing', async () => {
    const before = await everything();
    const outcomes: Record<string, string[]> = {};
    await withTk(engine, BASE_DIR, async (tk) => {
      for (const [label, orgId] of BAD) {
        outcomes[label] = [];
        for (const call of [
          () => provisionTenant(orgId, { toolkit: tk }),
          () => tk.migrateTenants({ orgIds: [orgId] }),
          () => tk.rollbackTenants({ orgIds: ['org_existing', orgId] }),
        ]) {
          outcomes[label]!.push(
            outcome(
              await call().then(
                () => undefined,
                (e: unknown) => e,
              ),
            ),
          );
        }
      }
    });
    expect(outcomes).toEqual(Object.fromEntries(BAD.map(([label]) => [label, ['refused', 'refused', 'refused']])));
    expect(await everything()).toEqual(before);
  });

  it('CLI: provision:tenant and migrate:tenants --tenant refuse them with one line and exit 2, writing nothing', async () => {
    const before = await everything();
    const cases: [string[], string][] = [
      ...BAD.filter(([label]) =>
        ['empty', 'whitespace', 'very long', 'SQL metacharacters', 'an emoji', 'a path'].includes(label),
      ).map(([label, orgId]) => [['provision:tenant', orgId], label] as [string[], string]),
      [['migrate:tenants', '--tenant', 'org_existing', '--tenant', 'org_é'], 'unicode in --tenant'],
    ];
    for (const [args, label] of cases) {
      const result = await runCli(args, cliEnv(engine, BASE_DIR));
      const errors = result.stderr.split('\n').filter((l) => l.startsWith('error:'));
      expect({ label, code: result.code, stdout: result.stdout, errors: errors.length }).toEqual({
        label,
        code: 2,
        stdout: '',
        errors: 1,
      });
      expect(errors[0]).toMatch(/^error: Invalid org id/);
      expect(hasStack(result.stderr)).toBe(false);
    }
    expect(await everything()).toEqual(before);
  });

  it('the message shows an id with control or bidirectional characters escaped, so that it cannot disguise itself', async () => {
    // U+202E reverses the rest of the line on a terminal: "org_\u202eabc" would print as "org_cba".
    const sneaky = BAD.filter(([, orgId]) => UNPRINTABLE.test(orgId));
    expect(sneaky.map(([label]) => label)).toEqual(['a newline', 'a NUL byte', 'a right-to-left override']);
    await withTk(engine, BASE_DIR, async (tk) => {
      for (const [label, orgId] of sneaky) {
        const error = (await provisionTenant(orgId, { toolkit: tk }).then(
          () => undefined,
          (e: unknown) => e,
        )) as Error;
        expect({ label, message: error.message }).toEqual({ label, message: expect.not.stringMatching(UNPRINTABLE) });
      }
    });
    const result = await runCli(['provision:tenant', 'org_\u202eabc'], cliEnv(engine, BASE_DIR));
    expect(result.code).toBe(2);
    for (const line of result.stderr.split('\n')) expect(line).not.toMatch(UNPRINTABLE);
  });
});
