import type { ReferencedTable } from '../citus/citus.ts';
import { isObject, type ParsedStatement, stringList, type TreeNode, walk } from './parse.ts';

/**
 * The parser side of the lint's Citus rules (applied in Citus mode only, to tenant migrations):
 * what Citus 13 refuses, or does differently, in a distributed schema, read from its source
 * (`commands/schema_based_sharding.c`, `commands/table.c`, `commands/trigger.c`,
 * `commands/index.c`, `worker/worker_data_fetch_protocol.c`). The foreign-key rule needs the
 * database (is the target a reference table?): this file only finds the targets.
 */

/**
 * `citus-unsupported-ddl`: statements Citus refuses on tables of a distributed schema:
 * triggers (refused on distributed tables unless `citus.enable_unsafe_triggers`), rules,
 * foreign tables, inheritance, typed tables (`CREATE TABLE … OF`), a partition whose parent is
 * in another schema, and `ALTER TABLE` mixing `ADD CONSTRAINT` (or `SET DEFAULT nextval(…)`)
 * with other subcommands.
 */
export function citusUnsupportedDdl(statement: ParsedStatement): string | undefined {
  const { tag, body } = statement;
  if (tag === 'CreateTrigStmt') return 'CREATE TRIGGER (refused on distributed tables by default)';
  if (tag === 'RuleStmt') return 'CREATE RULE';
  if (tag === 'CreateForeignTableStmt') return 'CREATE FOREIGN TABLE';
  if (tag === 'CreateStmt') {
    if (body.ofTypename !== undefined) return 'CREATE TABLE … OF <type>';
    const parents = Array.isArray(body.inhRelations) ? body.inhRelations : [];
    if (parents.length > 0 && body.partbound === undefined) return 'CREATE TABLE … INHERITS';
    const parent = isObject(parents[0]) && isObject(parents[0].RangeVar) ? parents[0].RangeVar : undefined;
    if (parent && typeof parent.schemaname === 'string') return `PARTITION OF ${parent.schemaname}.${parent.relname}`;
    return undefined;
  }
  if (tag !== 'AlterTableStmt') return undefined;
  const cmds = alterCommands(body);
  if (cmds.some((c) => c.subtype === 'AT_AddInherit')) return 'ALTER TABLE … INHERIT';
  if (cmds.length < 2) return undefined;
  if (cmds.some((c) => c.subtype === 'AT_AddConstraint')) return 'ADD CONSTRAINT together with other subcommands';
  if (cmds.some((c) => c.subtype === 'AT_ColumnDefault' && callsNextval(c.def)))
    return 'SET DEFAULT nextval(…) together with other subcommands';
  return undefined;
}

const INT_SERIALS = new Set(['serial', 'serial4', 'smallserial', 'serial2']);

/**
 * `citus-int-serial`: a `serial`/`smallserial` column (Knex's `increments()`). Citus evaluates
 * `nextval()` on the coordinator for plain INSERTs, but an `INSERT … SELECT` inside the tenant
 * runs on its worker, where an int or smallint sequence refuses to hand out values.
 */
export function citusIntSerial(statement: ParsedStatement): string | undefined {
  const { tag, body } = statement;
  const columns: TreeNode[] = [];
  const table = isObject(body.relation) ? String(body.relation.relname) : '?';
  if (tag === 'CreateStmt') {
    for (const item of Array.isArray(body.tableElts) ? body.tableElts : []) {
      if (isObject(item) && isObject(item.ColumnDef)) columns.push(item.ColumnDef);
    }
  } else if (tag === 'AlterTableStmt') {
    for (const cmd of alterCommands(body)) {
      if (cmd.subtype === 'AT_AddColumn' && isObject(cmd.def) && isObject(cmd.def.ColumnDef))
        columns.push(cmd.def.ColumnDef);
    }
  }
  const found = columns.filter((c) => {
    const type = isObject(c.typeName) ? stringList(c.typeName.names)?.at(-1) : undefined;
    return INT_SERIALS.has(type ?? '');
  });
  return found.length === 0 ? undefined : `column ${found.map((c) => `${table}.${String(c.colname)}`).join(', ')}`;
}

/**
 * `citus-index-concurrently`: `CREATE INDEX CONCURRENTLY` works on a distributed schema's
 * tables, but Citus builds it on the worker outside the migration's transaction, and a failure
 * can leave an INVALID index behind there: a retry first needs `DROP INDEX CONCURRENTLY IF
 * EXISTS` (an `IF NOT EXISTS` retry would keep the invalid one).
 */
export function citusIndexConcurrently(statement: ParsedStatement): string | undefined {
  if (statement.tag !== 'IndexStmt' || statement.body.concurrent !== true) return undefined;
  const table = isObject(statement.body.relation) ? String(statement.body.relation.relname) : '?';
  const name = typeof statement.body.idxname === 'string' ? `${statement.body.idxname} ` : '';
  return `index ${name}on ${table}`;
}

/** `citus-foreign-key`: the tables the statement's foreign keys point at (checked against the database). */
export function foreignKeyTargets(statement: ParsedStatement): ReferencedTable[] {
  const targets: ReferencedTable[] = [];
  walk(statement.tag, statement.body, (tag, body) => {
    if (tag !== 'Constraint' || body.contype !== 'CONSTR_FOREIGN' || !isObject(body.pktable)) return undefined;
    const { schemaname, relname } = body.pktable;
    if (typeof relname === 'string')
      targets.push({ schema: typeof schemaname === 'string' ? schemaname : null, table: relname });
    return undefined;
  });
  return targets;
}

function alterCommands(body: TreeNode): TreeNode[] {
  const cmds = Array.isArray(body.cmds) ? body.cmds : [];
  return cmds.flatMap((item) => (isObject(item) && isObject(item.AlterTableCmd) ? [item.AlterTableCmd] : []));
}

function callsNextval(node: unknown): boolean {
  let found = false;
  if (!isObject(node)) return false;
  walk('def', node, (tag, body) => {
    if (tag === 'FuncCall' && stringList(body.funcname)?.at(-1) === 'nextval') found = true;
    return undefined;
  });
  return found;
}
