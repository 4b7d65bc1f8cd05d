import { readFileSync } from 'node:fs';
import type { Knex } from 'knex';
import { distributeSchema, nonReferenceTargets } from '../citus/citus.ts';
import { messageOf } from '../errors.ts';
import type { Migration } from '../migrations/source.ts';
import { MASTER_TARGET } from '../migrations/targets.ts';
import { readApplied } from '../migrations/tracking.ts';
import { foreignKeyTargets } from './citus-rules.ts';
import { readDisables } from './disable.ts';
import { excerpt, type ParsedStatement, parseSql } from './parse.ts';
import {
  checkStatement,
  type LintScope,
  RULE_NAMES,
  RULES,
  type RuleName,
  ruleApplies,
  type Severity,
  tablesCreated,
} from './rules.ts';
import {
  type Captured,
  type CapturedQuery,
  captureQueries,
  diffFingerprints,
  fingerprint,
  openScratchSchema,
  type QueryCapture,
  scopeSearchPath,
  scratchSchemaName,
  withRolledBackTransaction,
} from './scratch.ts';

/**
 * `lintMigrations`: runs every migration once, in order, inside one transaction that is always
 * rolled back, captures the SQL each sends, checks it with the parser rules, and checks that each
 * tenant migration's down undoes its up. Pending master migrations run first, on `public`, as a
 * deploy would run them; then the tenant migrations run in a fresh scratch schema. Nothing is
 * left in the database: the scratch schema, the tables, even the extensions are rolled back.
 */

export interface LintInput {
  /** Tenant migrations, in order (all of them run, from an empty scratch schema). */
  readonly tenant: readonly Migration[];
  /** Master migrations, in order; only those not yet applied to this database run. Omit to lint tenants only. */
  readonly master?: readonly Migration[];
}

/** Lint settings: extensions made sure of first, and the lock timeout of the trial transaction. */
export interface LintOptions {
  /** Extensions the provisioner installs in `public` (TENANT_EXTENSIONS), created in the lint transaction if missing. */
  readonly extensions?: readonly string[];
  /** `lock_timeout` for the lint transaction, in ms (0 waits forever). */
  readonly lockTimeoutMs?: number;
  /**
   * Citus mode (`Toolkit.citus()`): the scratch schema is a distributed schema, as a tenant's is,
   * and the Citus rules apply to tenant migrations.
   */
  readonly citus?: boolean;
}

/** One rule broken by one migration. `statement` is an excerpt of the SQL, when a statement is to blame. */
export interface LintFinding {
  readonly scope: LintScope;
  readonly migration: string;
  readonly file: string;
  readonly rule: RuleName;
  readonly severity: Severity;
  readonly explanation: string;
  /** What exactly: a qualified name, a column, an error message, what down left behind. */
  readonly detail: string;
  readonly statement: string | null;
  /** Which function sent the statement (null for findings about the migration as a whole). */
  readonly phase: 'up' | 'down' | null;
}

/**
 * How far a file was checked: `checked`; `not-checked` (a `transaction: false` migration, which
 * cannot run inside the lint transaction, or one that failed after an earlier one could not be
 * applied); `already-applied` (a master migration this database has: only pending ones run).
 */
export type LintFileStatus = 'checked' | 'not-checked' | 'already-applied';

/** One migration file's lint result: its findings and whether its trial run passed. */
export interface LintFileReport {
  readonly scope: LintScope;
  readonly migration: string;
  readonly file: string;
  readonly status: LintFileStatus;
  readonly reason: string | null;
  /** Statements parsed from the SQL it sent (up and down). */
  readonly statements: number;
  /** Rules its disable comments switch off. */
  readonly disabled: readonly RuleName[];
  /** Rules of its scope that were not applied to it (when not fully checked), minus the disabled ones. */
  readonly unchecked: readonly RuleName[];
  /** Unknown rule names in disable comments, statements the parser could not read. */
  readonly notes: readonly string[];
}

/** Counts of a lint run: files, errors, warnings. */
export interface LintTotals {
  readonly files: number;
  readonly checked: number;
  readonly notChecked: number;
  readonly errors: number;
  readonly warnings: number;
  /** Findings switched off by disable comments. */
  readonly suppressed: number;
}

/** The result of `lintMigrations`: per-file reports, totals, and `ok` when no error was found. */
export interface LintReport {
  /** True when there is no error (warnings allowed). */
  readonly ok: boolean;
  readonly files: readonly LintFileReport[];
  readonly findings: readonly LintFinding[];
  readonly totals: LintTotals;
  /** About the run as a whole, e.g. an extension that could not be created for it. */
  readonly notes: readonly string[];
  readonly durationMs: number;
}

/** Lints tenant (and pending master) migrations on a real database; the database is left as it was. */
export async function lintMigrations(knex: Knex, input: LintInput, options: LintOptions = {}): Promise<LintReport> {
  const started = Date.now();
  const notes: string[] = [];
  const files = await withRolledBackTransaction(knex, async (trx) => {
    const capture = captureQueries(trx);
    try {
      await trx.raw("select set_config('lock_timeout', ?, true)", [`${options.lockTimeoutMs ?? 0}ms`]);
      for (const name of options.extensions ?? []) {
        const failed = await savepoint(trx, (sp) => sp.raw('create extension if not exists ?? schema public', [name]));
        if (failed) notes.push(`extension ${name} is not available for the lint (${messageOf(failed)})`);
      }
      const master = input.master ? await lintMaster(trx, capture, input.master) : [];
      return [...master, ...(await lintTenant(trx, capture, input.tenant, options.citus === true))];
    } finally {
      capture.stop();
    }
  });
  const reports = files.map((f) => f.report());
  const findings = files.flatMap((f) => f.findings);
  const errors = findings.filter((f) => f.severity === 'error').length;
  return {
    ok: errors === 0,
    files: reports,
    findings,
    totals: {
      files: reports.length,
      checked: reports.filter((r) => r.status === 'checked').length,
      notChecked: reports.filter((r) => r.status === 'not-checked').length,
      errors,
      warnings: findings.length - errors,
      suppressed: files.reduce((n, f) => n + f.suppressed, 0),
    },
    notes,
    durationMs: Date.now() - started,
  };
}

/** Pending master migrations on `public`, each kept when it succeeds so that the next (and the tenants) see it. */
async function lintMaster(trx: Knex.Transaction, capture: QueryCapture, migrations: readonly Migration[]) {
  const tracked = await trx.raw("select to_regclass(format('%I.%I', ?::text, ?::text)) is not null as tracked", [
    MASTER_TARGET.schema,
    MASTER_TARGET.trackingTable,
  ]);
  const applied = new Set(tracked.rows[0]?.tracked ? (await readApplied(trx, MASTER_TARGET)).map((m) => m.name) : []);
  const files: FileLint[] = [];
  let behind: string | undefined;
  for (const migration of migrations) {
    const file = new FileLint('master', migration);
    files.push(file);
    if (applied.has(migration.name)) {
      file.skip('already-applied', 'already applied to this database: only pending master migrations run');
      continue;
    }
    await scopeSearchPath(trx, MASTER_TARGET.searchPath);
    if (!(await runUp(trx, capture, file, behind))) behind ??= migration.name;
  }
  return files;
}

/** Every tenant migration, in a fresh scratch schema: up (kept), then down → up in a savepoint that is rolled back. */
async function lintTenant(
  trx: Knex.Transaction,
  capture: QueryCapture,
  migrations: readonly Migration[],
  citus: boolean,
) {
  const schema = scratchSchemaName();
  const searchPath = await openScratchSchema(trx, schema);
  // Citus: what Citus refuses in a distributed schema fails here as it would in a tenant's.
  if (citus) await distributeSchema(trx, schema);
  const files: FileLint[] = [];
  let behind: string | undefined;
  for (const migration of migrations) {
    const file = new FileLint('tenant', migration, citus ? { trx, schema } : undefined);
    files.push(file);
    // A migration that changed the search path (flagged) must not move the next one out of the scratch schema.
    await scopeSearchPath(trx, searchPath);
    const before = await fingerprint(trx, schema);
    if (!(await runUp(trx, capture, file, behind))) {
      behind ??= migration.name;
      if (citus && !migration.transaction) file.noteConcurrentIndex();
      continue;
    }
    await checkDown(trx, capture, file, { schema, searchPath, before });
  }
  return files;
}

/**
 * Runs a migration's up in a savepoint, kept on success, and checks the SQL it sent (also the
 * statements sent before a failure). Returns whether it is now applied. A failure after an
 * earlier migration was not applied is `not-checked`, not an error: it may only lack that one.
 */
async function runUp(
  trx: Knex.Transaction,
  capture: QueryCapture,
  file: FileLint,
  behind: string | undefined,
): Promise<boolean> {
  const { migration } = file;
  if (!migration.transaction) {
    file.skip('not-checked', 'transaction: false: it cannot run inside the lint transaction, so it was not executed');
    return false;
  }
  let run: Captured<unknown> | undefined;
  const failed = await savepoint(trx, async (sp) => {
    run = await capture.during(async () => migration.up(sp));
    if (!run.ok) throw run.error;
  });
  await file.checkQueries(run?.queries ?? [], 'up');
  if (!failed) return true;
  if (behind) file.skip('not-checked', `up failed after ${behind} could not be applied: ${messageOf(failed)}`);
  else file.flag('up-fails', messageOf(failed), null, 'up');
  return false;
}

/**
 * `down-reverts-up`: down must exist, succeed, leave the scratch schema as it was before up (by
 * catalog fingerprint), and up must then succeed again. All of it happens in a savepoint that is
 * rolled back, so the next migration starts from this one's up.
 */
async function checkDown(
  trx: Knex.Transaction,
  capture: QueryCapture,
  file: FileLint,
  scratch: { schema: string; searchPath: string; before: readonly string[] },
): Promise<void> {
  const down = file.migration.down;
  if (!down) {
    file.flag('down-reverts-up', 'it has no down function', null, null);
    return;
  }
  const queries: CapturedQuery[] = [];
  const problem = await withRolledBackTransaction(trx, async (sp): Promise<string | undefined> => {
    await scopeSearchPath(sp, scratch.searchPath);
    const reverted = await capture.during(async () => down(sp));
    queries.push(...reverted.queries);
    if (!reverted.ok) return `down failed: ${messageOf(reverted.error)}`;
    const diff = diffFingerprints(scratch.before, await fingerprint(sp, scratch.schema));
    const left = diff.extra.map((l) => `left behind: ${l}`);
    const lost = diff.missing.map((l) => `not restored: ${l}`);
    if (left.length + lost.length > 0) return [...left, ...lost].join('; ');
    await scopeSearchPath(sp, scratch.searchPath);
    const again = await capture.during(async () => file.migration.up(sp));
    return again.ok ? undefined : `up fails after down: ${messageOf(again.error)}`;
  });
  await file.checkQueries(queries, 'down');
  if (problem) file.flag('down-reverts-up', problem, null, 'down');
}

/** Runs `cb` in a savepoint: kept when it resolves, rolled back when it throws; returns the error, if any. */
async function savepoint(trx: Knex.Transaction, cb: (sp: Knex.Transaction) => Promise<unknown>): Promise<unknown> {
  try {
    await trx.transaction(async (sp) => {
      await cb(sp);
    });
    return undefined;
  } catch (error) {
    return error ?? new Error('the savepoint was rolled back');
  }
}

/** Citus mode in the tenant lint: the transaction and the (distributed) scratch schema that foreign keys are resolved from. */
interface CitusLint {
  readonly trx: Knex.Transaction;
  readonly schema: string;
}

/** One file's findings as they are made: disable comments applied, statements counted. */
class FileLint {
  readonly findings: LintFinding[] = [];
  suppressed = 0;
  private statements = 0;
  private status: LintFileStatus = 'checked';
  private reason: string | null = null;
  private readonly disabled: ReadonlySet<RuleName>;
  private readonly notes: string[] = [];
  private readonly text: string;

  constructor(
    readonly scope: LintScope,
    readonly migration: Migration,
    private readonly citus?: CitusLint,
  ) {
    this.text = fileText(migration.file);
    const disables = readDisables(this.text);
    this.disabled = new Set(disables.rules);
    for (const name of disables.unknown) this.notes.push(`unknown rule in a disable comment: ${name}`);
  }

  /** Parses what the migration sent and applies the parser rules; tables it created are exempt from the "existing table" rules. */
  async checkQueries(queries: readonly CapturedQuery[], phase: 'up' | 'down'): Promise<void> {
    const created = new Set<string>();
    for (const query of queries) {
      const parsed = await parseSql(query.sql, query.bindings);
      if (!parsed.ok) {
        this.notes.push(`statement not parsed (${parsed.error}): ${excerpt(query.sql)}`);
        continue;
      }
      for (const statement of parsed.statements) {
        this.statements++;
        for (const v of checkStatement(statement, { scope: this.scope, created, citus: this.citus !== undefined }))
          this.flag(v.rule, v.detail, excerpt(statement.text), phase);
        if (this.citus) await this.checkForeignKeys(statement, phase);
        for (const table of tablesCreated(statement)) created.add(table);
      }
    }
  }

  /** `citus-foreign-key`: the statement's foreign keys, resolved in the lint transaction (one query when it has any). */
  private async checkForeignKeys(statement: ParsedStatement, phase: 'up' | 'down'): Promise<void> {
    const targets = foreignKeyTargets(statement);
    if (!this.citus || targets.length === 0) return;
    const outside = await nonReferenceTargets(this.citus.trx, this.citus.schema, targets);
    if (outside.length > 0)
      this.flag('citus-foreign-key', `references ${outside.join(', ')}`, excerpt(statement.text), phase);
  }

  /**
   * `citus-index-concurrently` for a `transaction: false` migration, which the lint cannot run
   * (so no statement of it is parsed): its file's text is searched for the word instead.
   */
  noteConcurrentIndex(): void {
    if (/\bconcurrently\b/i.test(this.text))
      this.flag('citus-index-concurrently', 'a transaction: false migration that mentions CONCURRENTLY', null, 'up');
  }

  flag(rule: RuleName, detail: string, statement: string | null, phase: 'up' | 'down' | null): void {
    if (this.disabled.has(rule)) {
      this.suppressed++;
      return;
    }
    const { severity, explanation } = RULES[rule];
    const { name, file } = this.migration;
    this.findings.push({
      scope: this.scope,
      migration: name,
      file,
      rule,
      severity,
      explanation,
      detail,
      statement,
      phase,
    });
  }

  skip(status: Exclude<LintFileStatus, 'checked'>, reason: string): void {
    this.status = status;
    this.reason = reason;
  }

  report(): LintFileReport {
    const unchecked =
      this.status === 'checked'
        ? []
        : RULE_NAMES.filter((r) => ruleApplies(r, this.scope, this.citus !== undefined) && !this.disabled.has(r));
    return {
      scope: this.scope,
      migration: this.migration.name,
      file: this.migration.file,
      status: this.status,
      reason: this.reason,
      statements: this.statements,
      disabled: [...this.disabled],
      unchecked,
      notes: this.notes,
    };
  }
}

/** The file's text for its disable comments; none when it cannot be read (an in-memory migration). */
function fileText(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}
