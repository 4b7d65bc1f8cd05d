import type { Knex } from 'knex';
import { diffObjects, listObjects, type SchemaObject } from '../migrations/drift.ts';
import { TENANT_TRACKING_TABLE } from '../migrations/targets.ts';

/**
 * What `tenant:move` compares between the source schema and its restored copy before the
 * registry is switched: the tracking rows (id, name, batch, time), the row count of every table
 * and the state of every sequence, and the catalog objects the drift fingerprint covers
 * (src/migrations/drift.ts: columns, indexes, constraints, triggers, functions, types). Any
 * difference fails the move.
 */

/** One side of the comparison, read from one server. */
export interface SchemaSnapshot {
  /** The tracking rows in id order (the time as epoch text); null without a tracking table. */
  readonly tracking: readonly TrackingRow[] | null;
  /** `table <name>` → its row count, `sequence <name>` → `<last_value> <is_called>`. */
  readonly data: ReadonlyMap<string, string>;
  readonly objects: readonly SchemaObject[];
}

/** One row of a tenant's tracking table, as compared. */
export interface TrackingRow {
  readonly id: number;
  readonly name: string | null;
  readonly batch: number | null;
  readonly at: string | null;
}

/** What was compared (and found equal). */
export interface MoveVerification {
  readonly trackingRows: number;
  readonly tables: number;
  readonly rows: number;
  readonly sequences: number;
  readonly objects: number;
}

/** Reads a snapshot of `schema` on `conn`: three catalog queries and one counting query. */
export async function snapshotSchema(conn: Knex, schema: string): Promise<SchemaSnapshot> {
  const relations = await conn.raw(
    `select c.relname as name, c.relkind as kind
       from pg_class c
      where c.relnamespace = to_regnamespace(?)
        and (c.relkind in ('r', 'p', 'S') or (c.relkind = 'm' and c.relispopulated))
      order by 1`,
    [schema],
  );
  const rels = relations.rows as { name: string; kind: string }[];
  const parts: string[] = [];
  const bindings: Knex.RawBinding[] = [];
  for (const { name, kind } of rels) {
    if (kind === 'S') {
      parts.push(`select ?::text as key, last_value::text || ' ' || is_called::text as value from ??.??`);
      bindings.push(`sequence ${name}`, schema, name);
    } else {
      parts.push('select ?::text as key, count(*)::text as value from ??.??');
      bindings.push(`table ${name}`, schema, name);
    }
  }
  const data = new Map<string, string>();
  if (parts.length > 0) {
    const counted = await conn.raw(parts.join('\nunion all\n'), bindings);
    for (const row of counted.rows as { key: string; value: string }[]) data.set(row.key, row.value);
  }
  const hasTracking = rels.some((r) => r.name === TENANT_TRACKING_TABLE && r.kind === 'r');
  const tracking = hasTracking
    ? ((
        await conn.raw(
          'select id, name, batch, extract(epoch from migration_time)::text as at from ??.?? order by id',
          [schema, TENANT_TRACKING_TABLE],
        )
      ).rows as TrackingRow[])
    : null;
  const objects = (await listObjects(conn, [schema])).get(schema) ?? [];
  return { tracking, data, objects };
}

/**
 * The differences between two snapshots, one line each (at most `limit`, then a count of the
 * rest); empty when they agree. Pure.
 */
export function compareSnapshots(
  source: SchemaSnapshot,
  target: SchemaSnapshot,
  names: { readonly source: string; readonly target: string },
  limit = 5,
): string[] {
  const differences: string[] = [];
  const src = source.tracking ?? [];
  const tgt = target.tracking ?? [];
  if ((source.tracking === null) !== (target.tracking === null)) {
    differences.push(
      `tracking table: ${source.tracking ? 'present' : 'missing'} on ${names.source}, ${target.tracking ? 'present' : 'missing'} on ${names.target}`,
    );
  } else if (JSON.stringify(src) !== JSON.stringify(tgt)) {
    differences.push(`tracking rows: ${src.length} on ${names.source}, ${tgt.length} on ${names.target}, not the same`);
  }
  for (const key of new Set([...source.data.keys(), ...target.data.keys()])) {
    const a = source.data.get(key);
    const b = target.data.get(key);
    if (a !== b) differences.push(`${key}: ${a ?? 'missing'} on ${names.source}, ${b ?? 'missing'} on ${names.target}`);
  }
  for (const diff of diffObjects(target.objects, source.objects)) {
    differences.push(
      `${diff.object}: ${diff.change === 'added' ? `only on ${names.target}` : diff.change === 'missing' ? `missing on ${names.target}` : 'defined differently'}`,
    );
  }
  if (differences.length <= limit) return differences;
  return [...differences.slice(0, limit), `and ${differences.length - limit} more`];
}

/** The totals of a snapshot that matched. */
export function verificationOf(snapshot: SchemaSnapshot): MoveVerification {
  let tables = 0;
  let rows = 0;
  let sequences = 0;
  for (const [key, value] of snapshot.data) {
    if (key.startsWith('table ')) {
      tables++;
      rows += Number(value);
    } else sequences++;
  }
  return { trackingRows: snapshot.tracking?.length ?? 0, tables, rows, sequences, objects: snapshot.objects.length };
}
