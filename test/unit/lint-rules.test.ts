import { describe, expect, it } from 'vitest';
import { readDisables } from '../../src/lint/disable.ts';
import { excerpt, type ParsedStatement, parseSql } from '../../src/lint/parse.ts';
import {
  blockingIndex,
  checkStatement,
  createsExtension,
  notNullWithoutDefault,
  RULE_NAMES,
  RULES,
  schemaQualified,
  searchPathChange,
  tablesCreated,
} from '../../src/lint/rules.ts';
import { diffFingerprints } from '../../src/lint/scratch.ts';

// The parser rules are pure functions of libpg-query's parse tree: no database here.

async function statement(sql: string, bindings: readonly unknown[] = []): Promise<ParsedStatement> {
  const parsed = await parseSql(sql, bindings);
  if (!parsed.ok) throw new Error(parsed.error);
  expect(parsed.statements).toHaveLength(1);
  return parsed.statements[0]!;
}

const NONE = new Set<string>();

describe('parseSql', () => {
  it('splits a query into statements, each with its own text (byte offsets, UTF-8 safe)', async () => {
    const parsed = await parseSql("insert into t values ('ünïcødé'); create index i on t (a)");
    expect(parsed.ok).toBe(true);
    if (!parsed.ok) return;
    expect(parsed.statements.map((s) => [s.tag, s.text])).toEqual([
      ['InsertStmt', "insert into t values ('ünïcødé')"],
      ['IndexStmt', 'create index i on t (a)'],
    ]);
  });

  it('reports SQL it cannot parse instead of throwing', async () => {
    const parsed = await parseSql('create tabel oops');
    expect(parsed).toMatchObject({ ok: false });
  });

  it('cuts an excerpt to one line', () => {
    expect(excerpt('create table t (\n  id int\n)')).toBe('create table t ( id int )');
    expect(excerpt('x'.repeat(200), 10)).toBe(`${'x'.repeat(9)}…`);
  });
});

describe('schema-qualified', () => {
  it.each([
    ['create table public.foo (id int)', 'public.foo'],
    ['insert into tid_abc.x values (1)', 'tid_abc.x'],
    ['update public.tenants set status = $1', 'public.tenants'],
    ['select * from items join tid_cf4116b064.items o on true', 'tid_cf4116b064.items'],
    ['create table a (id int references public.tenants (id))', 'public.tenants'],
    ['create table a (x public.mood)', 'public.mood'],
    ['create function public.touch() returns trigger language plpgsql as $$ begin return new; end $$', 'public.touch'],
    ['create trigger t before update on items for each row execute function public.touch()', 'public.touch'],
    ['drop table public.foo, bar', 'public.foo'],
    ['drop trigger t on public.items', 'public.items.t'],
    ["create type public.mood as enum ('ok')", 'public.mood'],
    ['create index i on public.items (a)', 'public.items'],
    ['create sequence tid_abc.s', 'tid_abc.s'],
  ])('flags %s', async (sql, name) => {
    expect(schemaQualified(await statement(sql))).toBe(name);
  });

  it.each([
    'create table foo (id int)',
    'insert into items select * from other',
    'create table a (id int references tenants (id), v vector(3))',
    'select pg_catalog.now()',
    'create table a (id pg_catalog.int4)',
    'drop table foo',
    'create function touch() returns trigger language plpgsql as $$ begin return new; end $$',
  ])('passes %s', async (sql) => {
    expect(schemaQualified(await statement(sql))).toBeUndefined();
  });
});

describe('search-path', () => {
  it.each([
    ['set search_path = public', []],
    ['set local search_path to a, public', []],
    ['set session search_path to default', []],
    ['reset search_path', []],
    ["select set_config('search_path', 'public', true)", []],
    ["select pg_catalog.set_config('SEARCH_PATH', 'public', false)", []],
    ['select set_config($1, $2, true)', ['search_path', 'public']],
    ["select set_config('search_path'::text, 'x', true)", []],
    ['alter role app set search_path = public', []],
  ])('flags %s', async (sql, bindings) => {
    expect(searchPathChange(await statement(sql, bindings))).toBeDefined();
  });

  it.each([
    ['set local lock_timeout = 1000', []],
    ["select set_config('lock_timeout', '1s', true)", []],
    ['select set_config($1, $2, true)', ['statement_timeout', '0']],
    ["create function f() returns int set search_path = pg_catalog as 'select 1' language sql", []],
    ["select 'set search_path = public'", []],
  ])('passes %s', async (sql, bindings) => {
    expect(searchPathChange(await statement(sql, bindings))).toBeUndefined();
  });
});

describe('create-extension', () => {
  it('flags CREATE EXTENSION and passes other statements', async () => {
    expect(createsExtension(await statement('create extension if not exists vector'))).toBe('CREATE EXTENSION vector');
    expect(createsExtension(await statement('create table extension (id int)'))).toBeUndefined();
  });
});

describe('index-not-concurrent', () => {
  it('flags a plain or unique index on a table the migration did not create', async () => {
    expect(blockingIndex(await statement('create index i on t (a)'), NONE)).toBe('index on existing table t');
    expect(blockingIndex(await statement('create unique index on t (lower(a))'), NONE)).toBeDefined();
  });

  it('passes CONCURRENTLY, and an index on a table created earlier in the same migration', async () => {
    expect(blockingIndex(await statement('create index concurrently i on t (a)'), NONE)).toBeUndefined();
    expect(blockingIndex(await statement('create index i on t (a)'), new Set(['t']))).toBeUndefined();
  });
});

describe('not-null-without-default', () => {
  it.each([
    ['alter table t add column c int not null', 'column t.c'],
    ['alter table "t" add column "c" varchar(255) not null', 'column t.c'],
    ['alter table t add column c int primary key', 'column t.c'],
    ['alter table t add column c int not null default 0, add column d text not null', 'column t.d'],
  ])('flags %s', async (sql, detail) => {
    expect(notNullWithoutDefault(await statement(sql), NONE)).toBe(detail);
  });

  it.each([
    'alter table t add column c int',
    "alter table t add column c text not null default ''",
    'alter table t add column c int generated always as identity',
    'alter table t add column c bigserial primary key',
    'alter table t add column c int not null generated always as (1) stored',
    'alter table t alter column c set not null',
  ])('passes %s', async (sql) => {
    expect(notNullWithoutDefault(await statement(sql), NONE)).toBeUndefined();
  });

  it('passes a table created earlier in the same migration', async () => {
    expect(notNullWithoutDefault(await statement('alter table t add column c int not null'), new Set(['t']))).toBe(
      undefined,
    );
  });
});

describe('checkStatement', () => {
  it('applies every rule of the scope; master migrations may name public and create extensions', async () => {
    const sql = await statement('create table public.t (id int)');
    expect(checkStatement(sql, { scope: 'tenant', created: NONE }).map((v) => v.rule)).toEqual(['schema-qualified']);
    expect(checkStatement(sql, { scope: 'master', created: NONE })).toEqual([]);
    const ext = await statement('create extension vector');
    expect(checkStatement(ext, { scope: 'master', created: NONE })).toEqual([]);
    const path = await statement('set search_path = public');
    expect(checkStatement(path, { scope: 'master', created: NONE }).map((v) => v.rule)).toEqual(['search-path']);
  });

  it('knows the tables a statement creates', async () => {
    expect(tablesCreated(await statement('create table if not exists t (id int)'))).toEqual(['t']);
    expect(tablesCreated(await statement('create table t2 as select 1'))).toEqual(['t2']);
    expect(tablesCreated(await statement('create materialized view mv as select 1'))).toEqual(['mv']);
    expect(tablesCreated(await statement('create index i on t (a)'))).toEqual([]);
  });

  it('every rule has a name, a severity and a one-line explanation', () => {
    for (const name of RULE_NAMES) {
      expect(RULES[name].name).toBe(name);
      expect(RULES[name].explanation).not.toContain('\n');
    }
    expect(RULES['index-not-concurrent'].severity).toBe('warning');
  });
});

describe('disable comments', () => {
  it('reads rule names from // and -- comment lines, with commas and a reason', () => {
    const text = [
      "import type { Knex } from 'knex';",
      '// migrate-lint-disable index-not-concurrent',
      '  -- migrate-lint-disable schema-qualified, search-path -- shared table, reviewed',
      '/* migrate-lint-disable down-reverts-up */',
      "const sql = 'migrate-lint-disable create-extension'; // not at the start of a comment line",
    ].join('\n');
    expect(readDisables(text)).toEqual({
      rules: ['index-not-concurrent', 'schema-qualified', 'search-path', 'down-reverts-up'],
      unknown: [],
    });
  });

  it('reports names that are not rules', () => {
    expect(readDisables('// migrate-lint-disable search-path not-a-rule')).toEqual({
      rules: ['search-path'],
      unknown: ['not-a-rule'],
    });
    expect(readDisables('// nothing to see')).toEqual({ rules: [], unknown: [] });
  });
});

describe('diffFingerprints', () => {
  it('names what is left behind and what is not restored', () => {
    const before = ['relation members (r)', 'column members.id integer not null'];
    const after = ['relation members (r)', 'column members.nickname character varying(255)'];
    expect(diffFingerprints(before, after)).toEqual({
      missing: ['column members.id integer not null'],
      extra: ['column members.nickname character varying(255)'],
    });
    expect(diffFingerprints(before, [...before].reverse())).toEqual({ missing: [], extra: [] });
  });
});
