import { citusIndexConcurrently, citusIntSerial, citusUnsupportedDdl } from './citus-rules.ts';
import { constantText, isObject, type ParsedStatement, stringList, type TreeNode, walk } from './parse.ts';

/**
 * The lint's rules. Each has a name (used in disable comments and reports), a severity, a
 * one-line explanation and the scopes it applies to. The parser rules are pure functions of one
 * parsed statement and what the same migration created before it; the database rules
 * (`down-reverts-up`, `up-fails`) are decided by running the migration in the lint's transaction.
 */

export type LintScope = 'tenant' | 'master';
/** An error fails `migrate:lint`; a warning is shown only. */
export type Severity = 'error' | 'warning';

/** Every lint rule's name, as `-- tenant-migrate-lint-disable <rule>` names it. */
export const RULE_NAMES = [
  'schema-qualified',
  'search-path',
  'create-extension',
  'index-not-concurrent',
  'not-null-without-default',
  'down-reverts-up',
  'up-fails',
  'citus-foreign-key',
  'citus-unsupported-ddl',
  'citus-int-serial',
  'citus-index-concurrently',
] as const;

/** The name of a lint rule, as `-- tenant-migrate-lint-disable <rule>` names it. */
export type RuleName = (typeof RULE_NAMES)[number];

export interface Rule {
  readonly name: RuleName;
  readonly severity: Severity;
  readonly explanation: string;
  readonly scopes: readonly LintScope[];
  /** `parser`: decided from the captured SQL; `database`: decided by running up and down. */
  readonly kind: 'parser' | 'database';
  /** Applied only in Citus mode (`CITUS`, docs/citus.md): what a distributed schema refuses. */
  readonly citus?: true;
}

const BOTH: readonly LintScope[] = ['tenant', 'master'];
const TENANT: readonly LintScope[] = ['tenant'];

export const RULES: Readonly<Record<RuleName, Rule>> = {
  'schema-qualified': {
    name: 'schema-qualified',
    severity: 'error',
    explanation: 'a tenant migration names the public or a tid_ schema; it must touch only the schema it runs in',
    scopes: TENANT,
    kind: 'parser',
  },
  'search-path': {
    name: 'search-path',
    severity: 'error',
    explanation: 'a migration changes search_path, which the runner scopes to the schema being migrated',
    scopes: BOTH,
    kind: 'parser',
  },
  'create-extension': {
    name: 'create-extension',
    severity: 'error',
    explanation: 'a tenant migration creates an extension; the provisioner installs extensions (TENANT_EXTENSIONS)',
    scopes: TENANT,
    kind: 'parser',
  },
  'index-not-concurrent': {
    name: 'index-not-concurrent',
    severity: 'warning',
    explanation: 'CREATE INDEX without CONCURRENTLY on an existing table blocks its writes while the index builds',
    scopes: BOTH,
    kind: 'parser',
  },
  'not-null-without-default': {
    name: 'not-null-without-default',
    severity: 'error',
    explanation: 'adding a NOT NULL column without a default to an existing table fails once it has rows',
    scopes: BOTH,
    kind: 'parser',
  },
  'down-reverts-up': {
    name: 'down-reverts-up',
    severity: 'error',
    explanation: 'down is missing or does not undo up (checked by running up, down, up in a scratch schema)',
    scopes: TENANT,
    kind: 'database',
  },
  'up-fails': {
    name: 'up-fails',
    severity: 'error',
    explanation: 'up fails when run after the migrations before it in the lint transaction',
    scopes: BOTH,
    kind: 'database',
  },
  'citus-foreign-key': {
    name: 'citus-foreign-key',
    severity: 'error',
    explanation:
      'Citus: a foreign key from a distributed schema may point only into that schema or at a reference table',
    scopes: TENANT,
    kind: 'database',
    citus: true,
  },
  'citus-unsupported-ddl': {
    name: 'citus-unsupported-ddl',
    severity: 'error',
    explanation: 'Citus refuses this statement on the tables of a distributed schema',
    scopes: TENANT,
    kind: 'parser',
    citus: true,
  },
  'citus-int-serial': {
    name: 'citus-int-serial',
    severity: 'warning',
    explanation:
      'Citus: an int serial (increments()) fails in INSERT … SELECT run on the worker; use bigIncrements()/bigserial',
    scopes: TENANT,
    kind: 'parser',
    citus: true,
  },
  'citus-index-concurrently': {
    name: 'citus-index-concurrently',
    severity: 'warning',
    explanation:
      'Citus builds a CONCURRENTLY index on the worker; a failure can leave it INVALID: DROP INDEX CONCURRENTLY IF EXISTS before a retry',
    scopes: TENANT,
    kind: 'parser',
    citus: true,
  },
};

/** Whether `rule` applies to `scope` (Citus rules only in Citus mode). */
export function ruleApplies(rule: RuleName, scope: LintScope, citus: boolean): boolean {
  return RULES[rule].scopes.includes(scope) && (citus || RULES[rule].citus !== true);
}

/** What one statement breaks: the rule and what in the statement (a name, a column). */
export interface Violation {
  readonly rule: RuleName;
  readonly detail: string;
}

/** What a statement is checked against: the scope, and the tables the same migration created before it. */
export interface StatementContext {
  readonly scope: LintScope;
  readonly created: ReadonlySet<string>;
  /** Citus mode: the Citus rules apply too. */
  readonly citus?: boolean;
}

/** Every parser rule of the scope, applied to one statement. */
export function checkStatement(statement: ParsedStatement, context: StatementContext): Violation[] {
  const found: Violation[] = [];
  const applies = (rule: RuleName): boolean => ruleApplies(rule, context.scope, context.citus === true);
  const add = (rule: RuleName, detail: string | undefined): void => {
    if (detail !== undefined && applies(rule)) found.push({ rule, detail });
  };
  add('schema-qualified', schemaQualified(statement));
  add('search-path', searchPathChange(statement));
  add('create-extension', createsExtension(statement));
  add('index-not-concurrent', blockingIndex(statement, context.created));
  add('not-null-without-default', notNullWithoutDefault(statement, context.created));
  if (context.citus) {
    add('citus-unsupported-ddl', citusUnsupportedDdl(statement));
    add('citus-int-serial', citusIntSerial(statement));
    add('citus-index-concurrently', citusIndexConcurrently(statement));
  }
  return found;
}

/** The tables (and materialized views) a statement creates, by name: later statements of the migration may index them freely. */
export function tablesCreated(statement: ParsedStatement): string[] {
  const { tag, body } = statement;
  if (tag === 'CreateStmt') return relationName(body.relation);
  if (tag === 'CreateTableAsStmt' && isObject(body.into)) return relationName(body.into.rel);
  return [];
}

function relationName(relation: unknown): string[] {
  return isObject(relation) && typeof relation.relname === 'string' ? [relation.relname] : [];
}

/** Schemas outside a tenant's own: the shared `public` and every tenant's `tid_…`. */
export function isForeignSchema(schema: string): boolean {
  return schema === 'public' || schema.startsWith('tid_');
}

// Fields holding a qualified name as a list of strings: functions, types, domains, operators' objects.
const QUALIFIED_NAME_FIELDS = ['funcname', 'names', 'typeName', 'domainname', 'objname', 'defnames'];
// Fields holding a list of qualified names as `List` nodes: DROP … and COMMENT ON … objects.
const OBJECT_LIST_FIELDS = ['objects', 'object'];

/**
 * `schema-qualified`: relations (every RangeVar: tables in DML and DDL, index targets, foreign key
 * targets, sequences, views), functions, triggers' functions, types, domains and dropped objects
 * named with `public.` or `tid_….`. Names inside string literals (`'public.t'::regclass`) and
 * PL/pgSQL bodies are not parsed.
 */
export function schemaQualified(statement: ParsedStatement): string | undefined {
  const names = new Set<string>();
  const note = (parts: readonly string[] | undefined): void => {
    if (!parts || parts.length < 2) return;
    // The schema is the part before the name; `drop trigger t on public.x` lists [public, x, t].
    if (parts.slice(0, -1).some(isForeignSchema)) names.add(parts.join('.'));
  };
  walk(statement.tag, statement.body, (tag, body) => {
    if (isRangeVar(tag, body) && typeof body.schemaname === 'string') note([body.schemaname, String(body.relname)]);
    for (const field of QUALIFIED_NAME_FIELDS) note(stringList(body[field]));
    for (const field of OBJECT_LIST_FIELDS) {
      const value = body[field];
      for (const item of Array.isArray(value) ? value : [value]) {
        if (isObject(item) && isObject(item.List)) note(stringList(item.List.items));
      }
    }
    return undefined;
  });
  return names.size === 0 ? undefined : [...names].join(', ');
}

function isRangeVar(tag: string, body: TreeNode): boolean {
  // Wrapped as `{ RangeVar }` in lists; bare in typed fields (`relation`, `pktable`, `sequence`, …).
  return tag === 'RangeVar' || (typeof body.relname === 'string' && typeof body.relpersistence === 'string');
}

/**
 * `search-path`: `SET [LOCAL|SESSION] search_path`, `RESET search_path`, `ALTER ROLE/DATABASE …
 * SET search_path` and `set_config('search_path', …)` (the name as a literal or a bound value).
 * A function's own `SET search_path` clause is allowed: it applies only while that function runs.
 */
export function searchPathChange(statement: ParsedStatement): string | undefined {
  let found: string | undefined;
  walk(statement.tag, statement.body, (tag, body) => {
    if (tag === 'DefElem' && body.defname === 'set') return 'skip';
    if ((tag === 'VariableSetStmt' || tag === 'setstmt') && body.name === 'search_path') {
      found ??= body.kind === 'VAR_RESET' ? 'RESET search_path' : 'SET search_path';
    }
    if (tag === 'FuncCall') {
      const name = stringList(body.funcname);
      const args = Array.isArray(body.args) ? body.args : [];
      const setting = constantText(args[0], statement.bindings);
      if (name?.at(-1) === 'set_config' && setting?.toLowerCase() === 'search_path')
        found ??= "set_config('search_path', …)";
    }
    return undefined;
  });
  return found;
}

/** `create-extension`: any `CREATE EXTENSION`. */
export function createsExtension(statement: ParsedStatement): string | undefined {
  if (statement.tag !== 'CreateExtensionStmt') return undefined;
  return `CREATE EXTENSION ${String(statement.body.extname)}`;
}

/** `index-not-concurrent`: `CREATE INDEX` without `CONCURRENTLY` on a table this migration did not create. */
export function blockingIndex(statement: ParsedStatement, created: ReadonlySet<string>): string | undefined {
  if (statement.tag !== 'IndexStmt' || statement.body.concurrent === true) return undefined;
  const [table] = relationName(statement.body.relation);
  return table === undefined || created.has(table) ? undefined : `index on existing table ${table}`;
}

const SERIAL_TYPES = new Set(['serial', 'serial2', 'serial4', 'serial8', 'smallserial', 'bigserial']);
// Constraints that give a new column a value for rows already there.
const VALUE_CONSTRAINTS = new Set(['CONSTR_DEFAULT', 'CONSTR_IDENTITY', 'CONSTR_GENERATED']);
// Constraints that refuse NULL in it.
const NOT_NULL_CONSTRAINTS = new Set(['CONSTR_NOTNULL', 'CONSTR_PRIMARY']);

/**
 * `not-null-without-default`: `ALTER TABLE … ADD COLUMN c … NOT NULL` (or `PRIMARY KEY`) with
 * no `DEFAULT`, identity, generated expression or serial type, on a table this migration did not
 * create. PostgreSQL refuses it once the table has a row; an empty scratch table hides that.
 */
export function notNullWithoutDefault(statement: ParsedStatement, created: ReadonlySet<string>): string | undefined {
  if (statement.tag !== 'AlterTableStmt') return undefined;
  const [table] = relationName(statement.body.relation);
  if (table === undefined || created.has(table)) return undefined;
  const columns: string[] = [];
  for (const item of Array.isArray(statement.body.cmds) ? statement.body.cmds : []) {
    const cmd = isObject(item) && isObject(item.AlterTableCmd) ? item.AlterTableCmd : undefined;
    const column = cmd?.subtype === 'AT_AddColumn' && isObject(cmd.def) ? cmd.def.ColumnDef : undefined;
    if (!isObject(column)) continue;
    const kinds = new Set(
      (Array.isArray(column.constraints) ? column.constraints : []).map((c) =>
        isObject(c) && isObject(c.Constraint) ? String(c.Constraint.contype) : '',
      ),
    );
    const type = isObject(column.typeName) ? stringList(column.typeName.names)?.at(-1) : undefined;
    const hasValue = [...kinds].some((k) => VALUE_CONSTRAINTS.has(k)) || SERIAL_TYPES.has(type ?? '');
    if (!hasValue && [...kinds].some((k) => NOT_NULL_CONSTRAINTS.has(k))) columns.push(`${table}.${column.colname}`);
  }
  return columns.length === 0 ? undefined : `column ${columns.join(', ')}`;
}
