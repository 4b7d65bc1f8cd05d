import type { Knex } from 'knex';
import type { CitusMode } from '../config/config.ts';
import { ToolkitError } from '../errors.ts';

/**
 * Citus schema-based sharding (Citus 12+): each tenant schema is a *distributed schema*, its
 * tables single-shard tables colocated on one worker node, placed and moved by Citus. The
 * registry, the ledger and the master migrations stay plain tables on the coordinator; every
 * toolkit connection goes to the coordinator, which routes each statement to the tenant's
 * worker. This file holds everything the toolkit asks of Citus: whether it is there, how a
 * schema is distributed, and where each schema's node is. See docs/citus.md.
 */

/** What the configured database says about Citus. */
export interface CitusInfo {
  /** The `citus` extension is installed in this database. */
  readonly installed: boolean;
  /** Its `extversion`, e.g. `13.2-1`; null when not installed. */
  readonly version: string | null;
  /** This database is the coordinator (`pg_dist_local_group.groupid = 0`), not a worker. */
  readonly coordinator: boolean;
}

/** The oldest Citus with schema-based sharding (`citus_schema_distribute`, `pg_dist_schema`). */
export const CITUS_MIN_MAJOR = 12;

/** Citus mode was asked for (or detected) but this database cannot serve it. */
export class CitusUnavailableError extends ToolkitError {
  constructor(message: string) {
    super('E_CITUS_UNAVAILABLE', message, { exitCode: 2 });
  }
}

/** Reads `pg_extension` (and, with Citus, which node this is): one or two cheap catalog queries. */
export async function detectCitus(knex: Knex | Knex.Transaction): Promise<CitusInfo> {
  const ext = await knex.raw("select extversion from pg_extension where extname = 'citus'");
  const version = (ext.rows[0]?.extversion as string | undefined) ?? null;
  if (version === null) return { installed: false, version: null, coordinator: false };
  const group = await knex.raw('select groupid from pg_dist_local_group');
  return { installed: true, version, coordinator: Number(group.rows[0]?.groupid ?? 0) === 0 };
}

/**
 * Whether Citus mode is on for this database: `off` never asks; `auto` is on when the `citus`
 * extension is installed (a Citus older than 12 has no schema-based sharding: off); `on`
 * requires it. Either way, a worker node is refused: tenant schemas must be created through the
 * coordinator, which alone places them (and `DATABASE_URL` must name it).
 */
export async function resolveCitus(knex: Knex, mode: CitusMode): Promise<boolean> {
  if (mode === 'off') return false;
  const info = await detectCitus(knex);
  if (!info.installed) {
    if (mode === 'auto') return false;
    throw new CitusUnavailableError(
      'CITUS=on but the citus extension is not installed in this database: create it on the coordinator (create extension citus), or set CITUS=off',
    );
  }
  if (!info.coordinator) {
    throw new CitusUnavailableError(
      'The configured database is a Citus worker node: point DATABASE_URL at the coordinator (tenant schemas are created and migrated through it)',
    );
  }
  const major = Number.parseInt(info.version ?? '', 10);
  if (!(major >= CITUS_MIN_MAJOR)) {
    if (mode === 'auto') return false;
    throw new CitusUnavailableError(
      `CITUS=on needs Citus ${CITUS_MIN_MAJOR} or later (schema-based sharding); this database has ${info.version}`,
    );
  }
  return true;
}

/**
 * Makes `schema` a distributed schema unless it is one already (`citus_schema_distribute`):
 * Citus picks its node, and every table created in it from now on (in this transaction too) is
 * a single-shard table colocated there. Used rather than `SET LOCAL
 * citus.enable_schema_based_sharding` before CREATE SCHEMA because it also works outside a
 * transaction (a provisioning whose migrations run step by step) and on a schema that already
 * exists (a provisioning resumed after a failure, or one made with CITUS=off), moving its
 * tables with it. Transactional: rolled back with its transaction, shards included.
 */
export async function distributeSchema(conn: Knex | Knex.Transaction, schema: string): Promise<void> {
  await conn.raw(
    `select citus_schema_distribute(n.oid::regnamespace) from pg_namespace n
      where n.nspname = ? and not exists (select 1 from pg_dist_schema d where d.schemaid = n.oid)`,
    [schema],
  );
}

/**
 * Each schema's node as `host:port`, in one query over Citus's metadata (`pg_dist_schema` →
 * its colocation group → a shard placement → `pg_dist_node`, the tables `citus_schemas` and
 * `citus_shards` are built on; the views themselves ask every worker for shard sizes). Null for
 * a schema that is not distributed (a plain schema on the coordinator), has no table yet, or
 * does not exist.
 */
export async function schemaNodes(
  knex: Knex | Knex.Transaction,
  schemas: readonly string[],
): Promise<Map<string, string | null>> {
  const nodes = new Map<string, string | null>();
  if (schemas.length === 0) return nodes;
  const result = await knex.raw(
    `select s.name as schema,
            (select format('%s:%s', dn.nodename, dn.nodeport)
               from pg_namespace n
               join pg_dist_schema d on d.schemaid = n.oid
               join pg_dist_partition p on p.colocationid = d.colocationid
               join pg_dist_shard sh on sh.logicalrelid = p.logicalrelid
               join pg_dist_placement pl on pl.shardid = sh.shardid
               join pg_dist_node dn on dn.groupid = pl.groupid and dn.noderole = 'primary'
              where n.nspname = s.name
              limit 1) as node
       from unnest(?::text[]) as s(name)`,
    [[...schemas]],
  );
  for (const row of result.rows as { schema: string; node: string | null }[]) nodes.set(row.schema, row.node);
  return nodes;
}

/** A table a foreign key points at, as the statement names it (`schema` null when unqualified). */
export interface ReferencedTable {
  readonly schema: string | null;
  readonly table: string;
}

/**
 * Of the tables `targets` name (resolved with the connection's search path), those outside
 * `schema` that are not Citus reference tables, as `schema.table`: a foreign key from a
 * distributed schema to them is refused by Citus. Names that resolve to nothing are left out.
 */
export async function nonReferenceTargets(
  conn: Knex | Knex.Transaction,
  schema: string,
  targets: readonly ReferencedTable[],
): Promise<string[]> {
  if (targets.length === 0) return [];
  const result = await conn.raw(
    `select distinct format('%I.%I', n.nspname, c.relname) as name
       from unnest(?::text[], ?::text[]) as t(sch, rel)
       join pg_class c on c.oid = case when t.sch = '' then to_regclass(quote_ident(t.rel))
                                       else to_regclass(format('%I.%I', t.sch, t.rel)) end
       join pg_namespace n on n.oid = c.relnamespace
      where n.nspname <> ?
        and not exists (select 1 from pg_dist_partition p
                         where p.logicalrelid = c.oid and p.partmethod = 'n' and p.repmodel = 't')
      order by 1`,
    // '' for an unqualified name (no schema is named '')
    [targets.map((t) => t.schema ?? ''), targets.map((t) => t.table), schema],
  );
  return (result.rows as { name: string }[]).map((r) => r.name);
}
