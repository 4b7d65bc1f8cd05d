import type { Knex } from 'knex';
import { messageOf } from '../errors.ts';
import { SCHEMA_PREFIX } from '../tenants/naming.ts';
import { groupBy, MAIN, probe, type TenantServerPools } from './fanout.ts';
import type { AppliedVersion, UnreachableServer } from './status.ts';
import { TENANT_TRACKING_TABLE } from './targets.ts';

/**
 * Drift: tenants whose schema differs from the other tenants at the same applied version (a
 * hot-fix applied by hand, a migration edited after some tenants ran it). Each tenant schema is
 * fingerprinted from the catalog in one query for the whole fleet; the few schemas that differ
 * are then listed object by object against a representative of the majority.
 *
 * What is compared: tables, views, sequences, columns (type, not null, default, identity,
 * generated), indexes, constraints, triggers, functions and enum/domain types. Not data, not
 * privileges, not the toolkit's own tracking tables, and not the schema's own name, which is
 * replaced by `@` in every definition (index definitions, defaults, function bodies name it).
 */

/** One catalog object of a schema: `kind name`, e.g. `column members.handle`, and its definition. */
export interface SchemaObject {
  readonly key: string;
  readonly definition: string;
}

/** How an outlier differs from the majority: objects only it has, objects it lacks, objects defined otherwise. */
export interface ObjectDiff {
  readonly object: string;
  readonly change: 'added' | 'missing' | 'changed';
  /** The outlier's definition (added, changed). */
  readonly outlier?: string;
  /** The majority's definition (missing, changed). */
  readonly majority?: string;
}

/** A tenant named in a drift report: org id and schema. */
export interface TenantRef {
  readonly orgId: string;
  readonly schema: string;
}

/** Tenants sharing one fingerprint that is not their version's majority, and how they differ from it. */
export interface DriftOutlier {
  readonly fingerprint: string;
  readonly tenants: readonly TenantRef[];
  /** Against the majority's representative; null when too many distinct outliers were listed already. */
  readonly diff: readonly ObjectDiff[] | null;
}

/** Tenants at one version: the fingerprint most of them share, and the outliers whose schema differs. */
export interface DriftGroup {
  readonly version: AppliedVersion;
  readonly tenants: number;
  /** Distinct fingerprints among them. */
  readonly fingerprints: number;
  readonly majority: { readonly fingerprint: string; readonly tenants: number; readonly representative: TenantRef };
  /** No fingerprint holds more tenants than every other (the "majority" is then the first of the largest). */
  readonly tie: boolean;
  readonly outliers: readonly DriftOutlier[];
}

/** Tenants grouped by the fingerprint of their schema at each version, with the outliers (`migrate:status --drift`). */
export interface DriftReport {
  /** Tenants fingerprinted (ACTIVE, schema present). */
  readonly tenants: number;
  readonly versions: number;
  /** Tenants whose fingerprint differs from their version's majority. */
  readonly drifted: number;
  /** Only versions with at least one outlier. */
  readonly groups: readonly DriftGroup[];
}

/**
 * Tenants on several servers: each schema is fingerprinted (and listed) on the server holding
 * it, and compared with every tenant at its version wherever that one lives.
 */
export interface DriftServers {
  /** The server of a tenant schema (`main` for the registry's own). */
  readonly serverOf: (schema: string) => string;
  readonly pools?: TenantServerPools;
  /** Told of a server that did not answer: its tenants are left out of the comparison. */
  readonly onUnreachable?: (server: UnreachableServer) => void;
}

/** Distinct outlier fingerprints listed object by object, per run (each costs one catalog read). */
const MAX_DIFFS = 50;
/** md5 of the empty string: what string_agg over no objects would hash to. */
const EMPTY_FINGERPRINT = 'd41d8cd98f00b204e9800998ecf8427e';

/**
 * The fingerprint of every tenant schema in `versions` (ACTIVE tenants whose version is known),
 * grouped per version; outliers diffed against their majority.
 */
export async function collectDrift(
  knex: Knex,
  versions: ReadonlyMap<string, AppliedVersion>,
  orgIdOf: (schema: string) => string,
  servers?: DriftServers,
): Promise<DriftReport> {
  const byServer = groupBy([...versions.keys()], (schema) => servers?.serverOf(schema) ?? MAIN);
  const fingerprints = new Map<string, string>();
  const unreachable = new Set<string>();
  for (const [server, schemas] of byServer) {
    if (server === MAIN) {
      // Only this server's tenants: another server's tenant may have left a copy here (a move).
      const mine = new Set(schemas);
      for (const [schema, print] of await fingerprintSchemas(knex))
        if (mine.has(schema)) fingerprints.set(schema, print);
      continue;
    }
    try {
      const prints = await fingerprintSchemas(knexOf(servers?.pools, server), schemas);
      for (const [schema, print] of prints) fingerprints.set(schema, print);
    } catch (error) {
      unreachable.add(server);
      const message = (await probe(servers?.pools, server)) ?? messageOf(error).split('\n')[0]!;
      servers?.onUnreachable?.({ server, message });
    }
  }
  const members: Member[] = [];
  for (const [schema, version] of versions) {
    if (unreachable.has(servers?.serverOf(schema) ?? MAIN)) continue;
    // A schema with no objects at all has no row: its fingerprint is that of nothing.
    const fingerprint = fingerprints.get(schema) ?? EMPTY_FINGERPRINT;
    members.push({ schema, orgId: orgIdOf(schema), version, fingerprint });
  }
  const groups = groupByVersion(members);
  // One representative schema per fingerprint that a diff needs: the majority's and each outlier's.
  const wanted: { majority: TenantRef; outlier: DriftOutlier }[] = [];
  for (const group of groups)
    for (const outlier of group.outliers) wanted.push({ majority: group.majority.representative, outlier });
  const listed = wanted.slice(0, MAX_DIFFS);
  const schemas = [...new Set(listed.flatMap((w) => [w.majority.schema, w.outlier.tenants[0]!.schema]))];
  const objects = new Map<string, SchemaObject[]>();
  for (const [server, some] of groupBy(schemas, (schema) => servers?.serverOf(schema) ?? MAIN)) {
    const found = await listObjects(server === MAIN ? knex : knexOf(servers?.pools, server), some);
    for (const [schema, list] of found) objects.set(schema, list);
  }
  const diffs = new Map<string, readonly ObjectDiff[]>();
  for (const { majority, outlier } of listed) {
    diffs.set(
      outlier.fingerprint + majority.schema,
      diffObjects(objects.get(outlier.tenants[0]!.schema) ?? [], objects.get(majority.schema) ?? []),
    );
  }
  const withDiffs = groups.map((g) => ({
    ...g,
    outliers: g.outliers.map((o) => ({
      ...o,
      diff: diffs.get(o.fingerprint + g.majority.representative.schema) ?? null,
    })),
  }));
  return {
    tenants: members.length,
    versions: new Set(members.map((m) => m.version.digest)).size,
    drifted: withDiffs.reduce((n, g) => n + g.outliers.reduce((k, o) => k + o.tenants.length, 0), 0),
    groups: withDiffs.filter((g) => g.outliers.length > 0),
  };
}

/** A tenant with its version and fingerprint, as grouping sees it. */
export interface Member extends TenantRef {
  readonly version: AppliedVersion;
  readonly fingerprint: string;
}

/**
 * Per version: the fingerprint most tenants share is the majority (ties: the one whose first
 * tenant comes first), every other fingerprint an outlier group. Pure; versions and outliers in
 * order of first appearance. Outlier diffs are left null here.
 */
export function groupByVersion(members: readonly Member[]): DriftGroup[] {
  const byVersion = new Map<string, { version: AppliedVersion; byPrint: Map<string, TenantRef[]> }>();
  for (const m of members) {
    let entry = byVersion.get(m.version.digest);
    if (!entry) {
      entry = { version: m.version, byPrint: new Map() };
      byVersion.set(m.version.digest, entry);
    }
    let list = entry.byPrint.get(m.fingerprint);
    if (!list) {
      list = [];
      entry.byPrint.set(m.fingerprint, list);
    }
    list.push({ orgId: m.orgId, schema: m.schema });
  }
  const groups: DriftGroup[] = [];
  for (const { version, byPrint } of byVersion.values()) {
    const prints = [...byPrint.entries()];
    // Stable sort: the largest first, ties in order of first appearance.
    const ranked = [...prints].sort((a, b) => b[1].length - a[1].length);
    const [majorityPrint, majorityTenants] = ranked[0]!;
    groups.push({
      version,
      tenants: prints.reduce((n, [, t]) => n + t.length, 0),
      fingerprints: prints.length,
      majority: { fingerprint: majorityPrint, tenants: majorityTenants.length, representative: majorityTenants[0]! },
      tie: ranked.length > 1 && ranked[1]![1].length === majorityTenants.length,
      outliers: ranked.slice(1).map(([fingerprint, tenants]) => ({ fingerprint, tenants, diff: null })),
    });
  }
  return groups;
}

/** What `outlier` has that `majority` lacks, lacks that it has, and defines otherwise; sorted by object. Pure. */
export function diffObjects(outlier: readonly SchemaObject[], majority: readonly SchemaObject[]): ObjectDiff[] {
  const theirs = new Map(majority.map((o) => [o.key, o.definition]));
  const ours = new Map(outlier.map((o) => [o.key, o.definition]));
  const diff: ObjectDiff[] = [];
  for (const [key, definition] of ours) {
    const other = theirs.get(key);
    if (other === undefined) diff.push({ object: key, change: 'added', outlier: definition });
    else if (other !== definition) diff.push({ object: key, change: 'changed', outlier: definition, majority: other });
  }
  for (const [key, definition] of theirs) {
    if (!ours.has(key)) diff.push({ object: key, change: 'missing', majority: definition });
  }
  return diff.sort((a, b) => (a.object < b.object ? -1 : a.object > b.object ? 1 : 0));
}

/**
 * Every catalog object of the schemas chosen by `where` (a condition on `s.nspname`), as
 * (schema, kind, name, definition) with the schema's own name replaced by `@`. The tracking
 * tables (and triggers, indexes, constraints and trigger functions on them) are the toolkit's
 * bookkeeping, not the application's schema, and are left out.
 */
function objectsSql(where: string): string {
  // The tracking tables and the sequences of their serial ids, by name: a pg_depend lookup per
  // relation costs seconds at 10,000 tenants.
  const t = TENANT_TRACKING_TABLE;
  const tracked = `c.relname in ('${t}', '${t}_lock', '${t}_id_seq', '${t}_lock_index_seq')`;
  return `
    with s as (select oid, nspname from pg_namespace s where ${where}),
    rel as (
      select c.oid, c.relnamespace, c.relname, c.relkind, c.relpersistence, ${tracked} as bookkeeping
        from pg_class c join s on s.oid = c.relnamespace
    ),
    objects as (
      select c.relnamespace as ns,
             case c.relkind when 'v' then 'view' when 'm' then 'materialized view' when 'S' then 'sequence'
                            when 'f' then 'foreign table' else 'table' end as kind,
             c.relname::text as name,
             case when c.relkind in ('v', 'm') then pg_get_viewdef(c.oid)
                  else c.relkind::text || c.relpersistence::text end as def
        from rel c where c.relkind in ('r', 'p', 'v', 'm', 'S', 'f') and not c.bookkeeping
      union all
      select c.relnamespace, 'column', c.relname || '.' || a.attname,
             format_type(a.atttypid, a.atttypmod)
               || case when a.attnotnull then ' not null' else '' end
               || case a.attidentity when 'a' then ' generated always as identity'
                                     when 'd' then ' generated by default as identity' else '' end
               || coalesce(case when a.attgenerated = 's' then ' generated always as ' else ' default ' end
                           || pg_get_expr(d.adbin, d.adrelid), '')
        from rel c join pg_attribute a on a.attrelid = c.oid
        left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
       where a.attnum > 0 and not a.attisdropped and c.relkind in ('r', 'p', 'v', 'm', 'f') and not c.bookkeeping
      union all
      select c.relnamespace, 'index', i.relname, pg_get_indexdef(x.indexrelid)
        from rel c join pg_index x on x.indrelid = c.oid join pg_class i on i.oid = x.indexrelid
       where not c.bookkeeping
      union all
      select c.relnamespace, 'constraint', c.relname || '.' || k.conname, pg_get_constraintdef(k.oid)
        from rel c join pg_constraint k on k.conrelid = c.oid
       where not c.bookkeeping
      union all
      select t.typnamespace, 'constraint', t.typname || '.' || k.conname, pg_get_constraintdef(k.oid)
        from pg_type t join s on s.oid = t.typnamespace join pg_constraint k on k.contypid = t.oid
      union all
      select c.relnamespace, 'trigger', c.relname || '.' || g.tgname, pg_get_triggerdef(g.oid)
        from rel c join pg_trigger g on g.tgrelid = c.oid
       where not g.tgisinternal and not c.bookkeeping
      union all
      select p.pronamespace, 'function', p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
             case when p.prokind in ('f', 'p') then pg_get_functiondef(p.oid) else p.prokind::text || coalesce(p.prosrc, '') end
        from pg_proc p join s on s.oid = p.pronamespace
       where not exists (select 1 from pg_trigger g join rel c on c.oid = g.tgrelid
                          where g.tgfoid = p.oid and c.bookkeeping)
      union all
      select t.typnamespace, 'type', t.typname,
             case t.typtype
               when 'e' then 'enum ' || (select string_agg(quote_literal(e.enumlabel), ', ' order by e.enumsortorder)
                                           from pg_enum e where e.enumtypid = t.oid)
               else 'domain ' || format_type(t.typbasetype, t.typtypmod)
                    || case when t.typnotnull then ' not null' else '' end
                    || coalesce(' default ' || t.typdefault, '') end
        from pg_type t join s on s.oid = t.typnamespace
       where t.typtype in ('e', 'd')
    )
    select s.nspname as schema, o.kind, o.name, replace(coalesce(o.def, ''), s.nspname, '@') as def
      from objects o join s on s.oid = o.ns`;
}

/** A tenant server's Knex (the registry's own is the caller's). */
function knexOf(pools: TenantServerPools | undefined, server: string): Knex {
  if (!pools) throw new Error(`server ${server} is not configured (TENANT_SERVERS)`);
  return pools.knexFor(server);
}

/**
 * One fingerprint per registered tenant schema: md5 over its objects (kind, name, md5 of the
 * normalised definition) in a fixed order, computed by the server in one statement. `schemas`:
 * those schemas instead (on another server than the registry's, which has no `public.tenants`).
 */
export async function fingerprintSchemas(knex: Knex, schemas?: readonly string[]): Promise<Map<string, string>> {
  const where =
    schemas === undefined
      ? `starts_with(s.nspname, '${SCHEMA_PREFIX}')
                 and exists (select 1 from public.tenants t where t.schema_name = s.nspname)`
      : 's.nspname = any(?::text[])';
  const result = await knex.raw(
    `select schema, md5(string_agg(kind || ' ' || name || ' ' || md5(def), E'\\n' order by kind, name)) as fingerprint
       from (${objectsSql(where)}) o group by schema`,
    schemas === undefined ? [] : [[...schemas]],
  );
  const prints = new Map<string, string>();
  for (const row of result.rows as { schema: string; fingerprint: string }[]) prints.set(row.schema, row.fingerprint);
  return prints;
}

/** The objects of a few schemas, for diffs: schema → objects sorted by key. */
export async function listObjects(knex: Knex, schemas: readonly string[]): Promise<Map<string, SchemaObject[]>> {
  const result = await knex.raw(`${objectsSql('s.nspname = any(?::text[])')} order by 1, 2, 3`, [[...schemas]]);
  const objects = new Map<string, SchemaObject[]>(schemas.map((s) => [s, []]));
  for (const row of result.rows as { schema: string; kind: string; name: string; def: string }[]) {
    objects.get(row.schema)?.push({ key: `${row.kind} ${row.name}`, definition: row.def });
  }
  return objects;
}
