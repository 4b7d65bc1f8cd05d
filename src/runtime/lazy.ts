import type { Knex } from 'knex';
import { CapabilityMemo, RunBooks } from '../migrations/books.ts';
import { verifyChecksums } from '../migrations/checksums.ts';
import { folderDigest, UP } from '../migrations/plan.ts';
import type { Migration, MigrationSource } from '../migrations/source.ts';
import { tenantTarget } from '../migrations/targets.ts';
import { failureOf, migrateSchema, type RunFailure, type RunSettings } from '../migrations/unit.ts';
import { ExpiringLru } from './cache.ts';

/** One lazy migration run of one tenant, as reported to the hooks. */
export interface LazyMigrationEvent {
  readonly orgId: string;
  readonly schema: string;
  readonly outcome: 'migrated' | 'up-to-date' | 'failed';
  /** Migrations applied and committed by this run. */
  readonly migrations: readonly string[];
  readonly error: RunFailure | null;
  readonly durationMs: number;
}

export interface LazyMigratorOptions {
  readonly knex: Knex;
  readonly source: MigrationSource;
  readonly settings: RunSettings;
  /** Schemas remembered as migrated (least recently used beyond it run again, finding nothing to do). */
  readonly max: number;
  /** A failed run is retried by the first request after this long. */
  readonly retryAfterMs: number;
  readonly now: () => number;
  readonly onError: (event: LazyMigrationEvent) => void;
  readonly onRun: ((event: LazyMigrationEvent) => void) | undefined;
}

interface LoadedMigrations {
  readonly migrations: readonly Migration[];
  readonly recorded: ReadonlySet<string>;
}

/**
 * Brings a tenant up to date on its first use in this process, with the same schema runner as
 * `migrate:tenants` (its advisory lock makes concurrent processes queue, the later finding
 * nothing to do). Concurrent first uses in this process share one run. Never throws: a failed
 * run is reported to `onError`, recorded in the registry for `status`, and retried after
 * `retryAfterMs`; meanwhile the tenant is served at the version it has.
 */
export class LazyMigrator {
  readonly #options: LazyMigratorOptions;
  readonly #runs: ExpiringLru<string, Promise<void>>;
  #loaded: Promise<LoadedMigrations> | undefined;
  readonly #capabilities = new CapabilityMemo();
  runs = 0;
  failures = 0;

  constructor(options: LazyMigratorOptions) {
    this.#options = options;
    this.#runs = new ExpiringLru(options.max, options.now);
  }

  /** Resolves once the tenant has been brought up to date (or the attempt has failed and been reported). */
  ensure(tenant: LazyTenant): Promise<void> {
    const known = this.#runs.get(tenant.schema);
    if (known) return known;
    // Stored before the first await, so that every concurrent caller finds this very run.
    const run = this.#run(tenant);
    this.#runs.set(tenant.schema, run, Infinity);
    return run;
  }

  async #run(tenant: LazyTenant): Promise<void> {
    this.runs++;
    const started = this.#options.now();
    const { knex, settings } = this.#options;
    const who = { orgId: tenant.orgId, schema: tenant.schema };
    let event: LazyMigrationEvent;
    try {
      const { migrations, recorded } = await this.#load();
      // The unit keeps the bookkeeping (tracking rows, digest, last error, a one-tenant ledger run).
      const books = new RunBooks({
        knex,
        capabilities: await this.#capabilities.get(knex),
        scope: 'tenant',
        migrations,
        recorded,
        ledger: {
          mode: 'per-call',
          identity: {
            command: 'lazy',
            kind: 'lazy',
            direction: 'up',
            flags: {},
            folderDigest: folderDigest(migrations),
          },
        },
      });
      // A tenant on another server runs there; its registry (and so `stillActive`) is on main.
      const remote = tenant.server !== null && tenant.server !== undefined;
      const report = await migrateSchema(
        { knex: tenant.pool ?? knex, migrations, settings, books },
        tenantTarget(tenant.schema, tenant.server),
        {
          intent: UP,
          tenant: who,
          // Under the tenant's lock: a tenant archived (or dropped) since it was looked up is left
          // alone; the request is then refused by the scoping statement (TenantArchivedError).
          prepare: (conn) => stillActive(remote ? knex : conn, tenant.schema),
        },
      );
      if (report.migrations.length > 0) await books.close().catch(() => undefined);
      // Never a dry-run here, so never a `would-*` outcome.
      const outcome = report.outcome as 'migrated' | 'up-to-date' | 'failed';
      event = { ...who, outcome, migrations: report.migrations, error: report.error, durationMs: 0 };
    } catch (error) {
      // Only loading (a bad file, a checksum mismatch) can land here: the unit reports, it does not throw.
      event = { ...who, outcome: 'failed', migrations: [], error: failureOf(error), durationMs: 0 };
    }
    event = { ...event, durationMs: this.#options.now() - started };
    if (event.outcome === 'failed') {
      this.failures++;
      this.#runs.set(tenant.schema, Promise.resolve(), this.#options.retryAfterMs);
      report(this.#options.onError, event);
    }
    if (this.#options.onRun) report(this.#options.onRun, event);
  }

  /** Loads the migrations and refuses edited files once per process; a failure is retried by the next run. */
  #load(): Promise<LoadedMigrations> {
    this.#loaded ??= (async () => {
      const migrations = await this.#options.source.load();
      const recorded = await verifyChecksums(this.#options.knex, 'tenant', migrations);
      return { migrations, recorded };
    })();
    const loading = this.#loaded;
    loading.catch(() => {
      if (this.#loaded === loading) this.#loaded = undefined;
    });
    return loading;
  }

  /** Forgets which schemas were migrated (they run again on their next use). */
  clear(): void {
    this.#runs.clear();
  }
}

/** Whether the tenant of `schema` is still ACTIVE (read under its lock, by the unit's `prepare`). */
/** A tenant as the lazy migrator needs it: where it is, and (on another server) that server's pool. */
interface LazyTenant {
  readonly orgId: string;
  readonly schema: string;
  readonly lastMigrationError: string | null;
  /** Its server; null or absent for the main one. */
  readonly server?: string | null;
  /** Its server's pool (absent: the main one). */
  readonly pool?: Knex;
}

async function stillActive(conn: Knex | Knex.Transaction, schema: string): Promise<boolean> {
  const result = await conn.raw('select status from public.tenants where schema_name = ?', [schema]);
  return (result.rows[0] as { status?: string } | undefined)?.status === 'ACTIVE';
}

function report(hook: (event: LazyMigrationEvent) => void, event: LazyMigrationEvent): void {
  try {
    hook(event);
  } catch {
    // A logging hook that throws must not turn a served request into a failed one.
  }
}
