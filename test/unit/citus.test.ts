import { describe, expect, it } from 'vitest';
import { tenantLines } from '../../src/cli/render-status.ts';
import { loadConfig } from '../../src/config/config.ts';
import { ConfigError } from '../../src/errors.ts';
import {
  citusIndexConcurrently,
  citusIntSerial,
  citusUnsupportedDdl,
  foreignKeyTargets,
} from '../../src/lint/citus-rules.ts';
import { type ParsedStatement, parseSql } from '../../src/lint/parse.ts';
import { checkStatement } from '../../src/lint/rules.ts';
import type { TenantStatusRow } from '../../src/migrations/status.ts';

// Citus mode's pure parts: the setting, the lint's parser rules, the NODE column. No database.

const SERVER = { DATABASE_URL: 'postgres://u@db:5432/app' };

async function statement(sql: string): Promise<ParsedStatement> {
  const parsed = await parseSql(sql);
  if (!parsed.ok) throw new Error(parsed.error);
  return parsed.statements[0]!;
}

describe('CITUS', () => {
  it('defaults to auto on a server and off on the embedded engine', () => {
    expect(loadConfig(SERVER).citus).toBe('auto');
    expect(loadConfig({ PGLITE_DATA_DIR: '/tmp/x' }).citus).toBe('off');
    expect(loadConfig({ ...SERVER, CITUS: 'ON' }).citus).toBe('on');
    expect(loadConfig({ ...SERVER, CITUS: 'false' }).citus).toBe('off');
  });

  it('refuses other values, and on without a server', () => {
    expect(() => loadConfig({ ...SERVER, CITUS: 'maybe' })).toThrow(/CITUS must be on, off or auto/);
    expect(() => loadConfig({ CITUS: 'on' })).toThrow(ConfigError);
  });
});

describe('Citus lint rules', () => {
  it.each([
    ['create trigger t after insert on a for each row execute function f()', 'CREATE TRIGGER'],
    ['create rule r as on insert to a do nothing', 'CREATE RULE'],
    ['create foreign table f (a int) server s', 'CREATE FOREIGN TABLE'],
    ['create table a (x int) inherits (b)', 'INHERITS'],
    ['create table a of t', 'OF <type>'],
    ['create table p partition of public.q for values in (1)', 'PARTITION OF public.q'],
    ['alter table a add constraint c unique (x), add column y int', 'ADD CONSTRAINT together'],
    ["alter table a alter column x set default nextval('s'), add column z int", 'nextval'],
    ['alter table a inherit b', 'INHERIT'],
  ])('citus-unsupported-ddl: %s', async (sql, detail) => {
    expect(citusUnsupportedDdl(await statement(sql))).toContain(detail);
  });

  it.each([
    'create table a (id bigserial primary key, b int)',
    'create table p partition of q for values in (1)',
    'alter table a add constraint c unique (x)',
    "alter table a alter column x set default nextval('s')",
    'create index i on a (x)',
  ])('citus-unsupported-ddl passes: %s', async (sql) => {
    expect(citusUnsupportedDdl(await statement(sql))).toBeUndefined();
  });

  it('citus-int-serial: serial and smallserial columns, not bigserial', async () => {
    expect(citusIntSerial(await statement('create table a (id serial, n smallserial, b bigserial)'))).toBe(
      'column a.id, a.n',
    );
    expect(citusIntSerial(await statement('alter table a add column k serial4'))).toBe('column a.k');
    expect(citusIntSerial(await statement('create table a (id bigint generated always as identity)'))).toBeUndefined();
  });

  it('citus-index-concurrently: CONCURRENTLY only', async () => {
    expect(citusIndexConcurrently(await statement('create index concurrently i on a (x)'))).toBe('index i on a');
    expect(citusIndexConcurrently(await statement('create index i on a (x)'))).toBeUndefined();
  });

  it('finds the tables foreign keys point at, qualified or not', async () => {
    const create = await statement(
      'create table a (id int references public.b(id), c int, foreign key (c) references d(id))',
    );
    expect(foreignKeyTargets(create)).toEqual([
      { schema: 'public', table: 'b' },
      { schema: null, table: 'd' },
    ]);
    const alter = await statement('alter table a add constraint fk foreign key (x) references b (id)');
    expect(foreignKeyTargets(alter)).toEqual([{ schema: null, table: 'b' }]);
  });

  it('apply in Citus mode only, to tenant migrations', async () => {
    const trigger = await statement('create trigger t after insert on a for each row execute function f()');
    const rules = (scope: 'tenant' | 'master', citus: boolean) =>
      checkStatement(trigger, { scope, created: new Set(), citus }).map((v) => v.rule);
    expect(rules('tenant', true)).toEqual(['citus-unsupported-ddl']);
    expect(rules('tenant', false)).toEqual([]);
    expect(rules('master', true)).toEqual([]);
  });
});

describe('migrate:status NODE column', () => {
  const row = (orgId: string, node?: string | null): TenantStatusRow => ({
    orgId,
    schema: `tid_${orgId}`,
    status: 'ACTIVE',
    state: 'up-to-date',
    applied: 1,
    pending: [],
    missing: [],
    error: null,
    ...(node === undefined ? {} : { node }),
  });
  const plain = (lines: readonly string[]): string[] => lines.map((l) => l.replace(/\u001b\[[0-9;]*m/g, ''));

  it('appears after SCHEMA only when the rows carry nodes; a plain schema shows -', () => {
    const withNodes = plain(tenantLines([row('a', '10.0.0.1:5432'), row('b', null)]));
    expect(withNodes[0]).toMatch(/^ORG ID +SCHEMA +NODE +STATUS/);
    expect(withNodes[2]).toMatch(/^a +tid_a +10\.0\.0\.1:5432 +ACTIVE/);
    expect(withNodes[3]).toMatch(/^b +tid_b +- +ACTIVE/);
    expect(plain(tenantLines([row('a')]))[0]).not.toContain('NODE');
  });
});
