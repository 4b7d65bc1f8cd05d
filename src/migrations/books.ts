import type { Knex } from 'knex';
import {
  closeRun,
  type OpenRun,
  openRun,
  type RunIdentity,
  type TenantLedgerRow,
  tenantRowClause,
} from '../ledger/ledger.ts';
import { type ChecksumScope, recordChecksums } from './checksums.ts';
import type { Migration } from './source.ts';
import { type SchemaTarget, TRACKING_TRIGGER_FUNCTION, trackingChange } from './tracking.ts';

/**
 * Bookkeeping: everything a run writes besides the migrations themselves. Each concern is
 * written in exactly one function here, and only the per-tenant unit (`unit.ts`) calls them:
 * - tracking rows, the registry digest, the cleared last error and the ledger row:
 *   `RunBooks.recordSteps`, one statement in the batch's own transaction;
 *   for a tenant on another server than the registry's, the tracking rows only, and the rest by
 *   `RunBooks.settle` on the main server once the batch has committed;
 * - a failure (last error and the ledger row): `RunBooks.recordFailure`, after the rollback;
 * - checksums of the files applied: `RunBooks.close`, once per run (they are fleet-wide).
 */

/** Which bookkeeping tables this database has. Probed once per run (one query). */
export interface Capabilities {
  readonly registry: boolean;
  /** `public.tenants.migrations_digest` exists. */
  readonly digest: boolean;
  /** The run ledger exists. */
  readonly ledger: boolean;
  /** `public.tenants.labels` exists. */
  readonly labels: boolean;
  /**
   * The tracking trigger's function exists (master migration `20261202000003_tracking_trigger`),
   * so tenant tracking tables get the trigger that clears the digest on outside changes.
   */
  readonly trackingTrigger: boolean;
  /** `public.tenants.server` exists (master migration `20261203000001_tenant_servers`). */
  readonly servers: boolean;
}

export const NO_CAPABILITIES: Capabilities = {
  registry: false,
  digest: false,
  ledger: false,
  labels: false,
  trackingTrigger: false,
  servers: false,
};

export async function probeCapabilities(conn: Knex | Knex.Transaction): Promise<Capabilities> {
  const result = await conn.raw(
    `select to_regclass('public.tenants') is not null as registry,
            exists (select 1 from pg_attribute where attrelid = to_regclass('public.tenants')
                     and attname = 'migrations_digest' and not attisdropped) as digest,
            to_regclass('public.tenant_migration_run_tenants') is not null as ledger,
            exists (select 1 from pg_attribute where attrelid = to_regclass('public.tenants')
                     and attname = 'labels' and not attisdropped) as labels,
            exists (select 1 from pg_attribute where attrelid = to_regclass('public.tenants')
                     and attname = 'server' and not attisdropped) as servers,
            -- Not with Citus: a trigger on a distributed table runs on a worker, where public.tenants is not.
            to_regprocedure(?) is not null
              and not exists (select 1 from pg_extension where extname = 'citus') as tracking_trigger`,
    [TRACKING_TRIGGER_FUNCTION],
  );
  const row = result.rows[0] as
    | (Record<Exclude<keyof Capabilities, 'trackingTrigger'>, boolean> & { tracking_trigger: boolean })
    | undefined;
  if (!row) return NO_CAPABILITIES;
  const { registry, digest, ledger, labels, servers } = row;
  // The trigger clears the digest: without the column it has nothing to clear.
  return { registry, digest, ledger, labels, servers, trackingTrigger: row.tracking_trigger && digest };
}

/**
 * A long-lived caller's memory of the capabilities: a table that exists is remembered, one that
 * did not is looked for again on the next call (a `migrate:master` may have made it since).
 * `forget()` after an error that says a remembered table is gone.
 */
export class CapabilityMemo {
  #known: Capabilities | undefined;

  async get(knex: Knex): Promise<Capabilities> {
    const known = this.#known;
    if (known?.registry && known.digest && known.ledger && known.labels && known.trackingTrigger && known.servers)
      return known;
    this.#known = await probeCapabilities(knex);
    return this.#known;
  }

  forget(): void {
    this.#known = undefined;
  }
}

/** Where a run's ledger rows go: nowhere, an open fan-out run, or a one-tenant run of its own. */
export type LedgerBinding =
  | { readonly mode: 'none' }
  | { readonly mode: 'run'; readonly run: OpenRun }
  | { readonly mode: 'per-call'; readonly identity: RunIdentity };

/** Who a tenant's bookkeeping is about. */
export interface TenantRef {
  readonly orgId: string | null;
  readonly schema: string;
}

/** One batch (or step) as `recordSteps` records it. */
export interface RecordedStep {
  readonly direction: 'up' | 'down';
  readonly names: readonly string[];
  readonly batch: number;
  readonly digest: string | undefined;
  readonly durationMs: number;
  /** Also set the tenant ACTIVE (provisioning, restore), in the same statement. */
  readonly activate?: boolean;
}

/** The bookkeeping of one run (a fan-out, a provisioning, a lazy migration, a master run). */
export class RunBooks {
  readonly #knex: Knex;
  readonly #caps: Capabilities;
  readonly #scope: ChecksumScope;
  readonly #migrations: readonly Migration[];
  readonly #recorded: ReadonlySet<string>;
  #ledger: LedgerBinding;
  /** A one-tenant run opened ahead because its batch commits step by step. */
  #sessionRun: OpenRun | undefined;
  readonly #applied = new Set<string>();
  /** Batches committed on another server whose registry side is not written yet (`settle`). */
  readonly #unsettled = new Map<string, { tenant: TenantRef | undefined; step: RecordedStep }>();
  #complete = false;

  constructor(options: {
    readonly knex: Knex;
    readonly capabilities: Capabilities;
    readonly scope: ChecksumScope;
    readonly migrations: readonly Migration[];
    /** Checksums already recorded (from `verifyChecksums`). */
    readonly recorded: ReadonlySet<string>;
    readonly ledger: LedgerBinding;
  }) {
    this.#knex = options.knex;
    this.#caps = options.capabilities;
    this.#scope = options.scope;
    this.#migrations = options.migrations;
    this.#recorded = options.recorded;
    this.#ledger = options.capabilities.ledger ? options.ledger : { mode: 'none' };
  }

  get capabilities(): Capabilities {
    return this.#caps;
  }

  /**
   * Writes, in ONE statement on the batch's connection (so in its transaction), the tracking rows
   * of `names`, and for a tenant: its registry digest (from `appliedNames`, the set applied after
   * this change), a cleared last error, and its ledger row.
   */
  async recordSteps(
    conn: Knex | Knex.Transaction,
    target: SchemaTarget,
    tenant: TenantRef | undefined,
    step: RecordedStep,
  ): Promise<void> {
    const clauses: string[] = [];
    const bindings: Knex.RawBinding[] = [];
    if (step.names.length > 0) {
      const change = trackingChange(target, step.direction, step.names, step.batch);
      if (step.direction === 'up') for (const name of step.names) this.#applied.add(name);
      if (target.server !== undefined) {
        // The registry is on another server: the tracking rows commit with the batch, the rest after it.
        await conn.raw(change.sql, change.bindings);
      } else {
        clauses.push(`tracking as (${change.sql} returning 1)`);
        bindings.push(...change.bindings);
      }
    }
    if (target.server !== undefined) {
      this.#unsettled.set(target.schema, { tenant, step });
      return;
    }
    await this.#writeRegistry(conn, target, tenant, step, clauses, bindings);
  }

  /**
   * For a tenant on another server than the registry's, after its batch committed there: its
   * ledger row, digest, cleared error (and activation) on the main server. A crash before this
   * leaves the registry one step behind (the run is then `interrupted`, the digest stale, which
   * only makes the next run read that tenant's tracking table); no-op for a tenant on main.
   */
  async settle(target: SchemaTarget): Promise<void> {
    const pending = this.#unsettled.get(target.schema);
    if (!pending) return;
    this.#unsettled.delete(target.schema);
    await this.#writeRegistry(this.#knex, { ...target, server: undefined }, pending.tenant, pending.step, [], []);
  }

  async #writeRegistry(
    conn: Knex | Knex.Transaction,
    target: SchemaTarget,
    tenant: TenantRef | undefined,
    step: RecordedStep,
    clauses: string[],
    bindings: Knex.RawBinding[],
  ): Promise<void> {
    const ledger = target.tenant && tenant && step.names.length > 0 ? this.#ledgerClause(tenant, step) : undefined;
    if (ledger) {
      clauses.push(ledger.sql);
      bindings.push(...ledger.bindings);
    }
    let main = 'select 1';
    if (target.tenant && this.#caps.registry) {
      // The last error is cleared by a success; the digest follows the tracking rows.
      const digest = this.#caps.digest && step.digest !== undefined;
      main = step.activate
        ? `update public.tenants set ${digest ? 'migrations_digest = ?, ' : ''}last_migration_error = null,
                  status = 'ACTIVE', error = null, updated_at = now() where schema_name = ?`
        : digest
          ? `update public.tenants set migrations_digest = ?, last_migration_error = null
            where schema_name = ? and (migrations_digest is distinct from ? or last_migration_error is not null)`
          : 'update public.tenants set last_migration_error = null where schema_name = ? and last_migration_error is not null';
      if (step.activate) bindings.push(...(digest ? [step.digest] : []), target.schema);
      else bindings.push(...(digest ? [step.digest, target.schema, step.digest] : [target.schema]));
    }
    if (clauses.length === 0 && main === 'select 1') return;
    await conn.raw(clauses.length > 0 ? `with ${clauses.join(', ')} ${main}` : main, bindings);
  }

  /** Sets the tenant ACTIVE after a stepped (`transaction: false`) batch's last step. */
  async activate(conn: Knex | Knex.Transaction, target: SchemaTarget): Promise<void> {
    await (target.server === undefined ? conn : this.#knex).raw(
      `update public.tenants set status = 'ACTIVE', error = null, updated_at = now() where schema_name = ?`,
      [target.schema],
    );
  }

  /**
   * A tenant's failed batch, after its rollback: the last error for status, and the ledger row
   * (with the error, and the steps a `transaction: false` batch committed before it failed).
   */
  async recordFailure(
    conn: Knex,
    target: SchemaTarget,
    tenant: TenantRef | undefined,
    failure: Omit<TenantLedgerRow, 'schema' | 'orgId' | 'outcome'>,
  ): Promise<void> {
    if (!target.tenant || !this.#caps.registry) return;
    const clauses: string[] = [];
    const bindings: Knex.RawBinding[] = [];
    if (tenant && this.#ledger.mode !== 'none') {
      const row: TenantLedgerRow = { ...failure, schema: target.schema, orgId: tenant.orgId, outcome: 'failed' };
      const clause = tenantRowClause(this.#ledgerTarget(), row);
      clauses.push(clause.sql);
      bindings.push(...clause.bindings);
    }
    const message = failure.error?.message ?? null;
    const update =
      'update public.tenants set last_migration_error = ?, updated_at = now() where schema_name = ? and last_migration_error is distinct from ?';
    // The registry's server, whichever server the tenant's batch ran on.
    const registry = target.server === undefined ? conn : this.#knex;
    this.#unsettled.delete(target.schema);
    await registry.raw(clauses.length > 0 ? `with ${clauses.join(', ')} ${update}` : update, [
      ...bindings,
      message,
      target.schema,
      message,
    ]);
  }

  /**
   * A `transaction: false` batch commits step by step: a one-tenant run gets its ledger row
   * opened first (`running`), so that every step appends to the same run.
   */
  async beforeSteppedBatch(conn: Knex, target: SchemaTarget): Promise<void> {
    if (this.#ledger.mode !== 'per-call') return;
    // On the batch's own connection: on a pool of one, the pool has none to spare meanwhile
    // (unless the batch runs on another server than the registry's).
    const on = target.server === undefined ? conn : undefined;
    this.#sessionRun = await openRun(this.#knex, this.#ledger.identity, on);
    this.#ledger = { mode: 'run', run: this.#sessionRun };
  }

  /** Files found applied in a tenant (e.g. one already ACTIVE): their checksums are recorded at close. */
  noteApplied(names: readonly string[]): void {
    for (const name of names) this.#applied.add(name);
  }

  /** A tenant found with every local file applied (so every file's checksum may be recorded). */
  noteComplete(): void {
    this.#complete = true;
  }

  /**
   * Records the checksums of the files this run applied, and of every local file when a tenant
   * was found complete (a run that died before recording them is made good). Once per run.
   */
  async close(outcome: { readonly failed: boolean } = { failed: false }): Promise<void> {
    if (this.#sessionRun) {
      const failed = outcome.failed ? 1 : 0;
      const counts = { total: 1, migrated: 1 - failed, 'up-to-date': 0, failed, skipped: 0 };
      await closeRun(this.#knex, this.#sessionRun, counts, failed ? 'failed' : 'succeeded');
    }
    const files = this.#complete ? this.#migrations : this.#migrations.filter((m) => this.#applied.has(m.name));
    await recordChecksums(this.#knex, this.#scope, files, this.#recorded);
  }

  #ledgerTarget(): { readonly id: number } | { readonly identity: RunIdentity } {
    const ledger = this.#ledger;
    if (ledger.mode === 'run') return { id: ledger.run.id };
    if (ledger.mode === 'per-call') return { identity: ledger.identity };
    throw new Error('no ledger');
  }

  #ledgerClause(
    tenant: TenantRef,
    step: {
      readonly direction: 'up' | 'down';
      readonly names: readonly string[];
      readonly batch: number;
      readonly durationMs: number;
    },
  ): { readonly sql: string; readonly bindings: readonly Knex.RawBinding[] } | undefined {
    if (this.#ledger.mode === 'none') return undefined;
    return tenantRowClause(this.#ledgerTarget(), {
      schema: tenant.schema,
      orgId: tenant.orgId,
      outcome: 'migrated',
      direction: step.direction,
      migrations: step.names,
      batch: step.batch,
      error: null,
      durationMs: step.durationMs,
    });
  }
}
