import type { Knex } from 'knex';
import { UsageError } from '../errors.ts';
import { lastDeployRun } from '../ledger/history.ts';
import { RUN_TENANTS, RUNS } from '../ledger/ledger.ts';
import { listTenants } from '../tenants/registry.ts';
import type { Capabilities } from './books.ts';
import type { FanoutPlan } from './fanout.ts';
import { planDown } from './plan.ts';
import { scanSchemas } from './prescan.ts';
import type { Migration } from './source.ts';
import { TENANT_TRACKING_TABLE } from './targets.ts';

/** What `rollback:tenants` undoes. With none of these: the last deploy run, exactly. */
export interface RollbackOptions {
  /** Roll back this run (its id in `migrate:runs`). */
  readonly run?: number;
  /** With `run`: roll back later batches on top of it first, instead of refusing. */
  readonly cascade?: boolean;
  /** Each tenant's latest batch, whatever run applied it (Knex's `migrate:rollback`). */
  readonly lastBatch?: boolean;
  /** Every batch of every selected tenant. */
  readonly all?: boolean;
}

/** A run cannot be rolled back as asked (nothing was written). */
export class RollbackRefusedError extends UsageError {
  constructor(message: string) {
    super(message, { code: 'E_ROLLBACK_REFUSED' });
  }
}

interface RunBatch {
  readonly batch: number;
  readonly names: readonly string[];
}

/**
 * Decides what a rollback touches, before anything is written. The default and `--run` read the
 * ledger: each tenant the run migrated gets exactly the batch the run applied; every other
 * tenant is left alone and reported skipped. A run with later batches on top in some tenant is
 * refused (naming the tenants and the later runs) unless `cascade`.
 */
export async function rollbackPlan(
  knex: Knex,
  capabilities: Capabilities,
  migrations: readonly Migration[],
  options: RollbackOptions,
  orgIds: readonly string[] | undefined,
): Promise<FanoutPlan> {
  const flags = { ...options, ...(orgIds ? { tenant: orgIds } : {}) };
  const base = { command: 'rollback:tenants', kind: 'rollback', direction: 'down', flags } as const;
  if (options.all) return { ...base, intentFor: () => ({ direction: 'down', scope: { kind: 'all' } }) };
  if (options.lastBatch) return { ...base, intentFor: () => ({ direction: 'down', scope: { kind: 'last-batch' } }) };
  if (!capabilities.ledger) {
    throw new RollbackRefusedError(
      'There is no run ledger to say what the last deploy applied (run `pnpm migrate:master`); ' +
        "to roll back each tenant's latest batch anyway, name it: --last-batch",
    );
  }
  const runId = options.run ?? (await lastDeployRun(knex));
  if (runId === undefined) {
    throw new RollbackRefusedError(
      'No deploy run in the ledger applied anything, so there is nothing to roll back (see `pnpm migrate:runs`)',
    );
  }
  const { batches, failedIn } = await runBatches(knex, runId);
  if (!options.cascade) await refuseIfCovered(knex, migrations, runId, batches, orgIds);
  const cascade = options.cascade ?? false;
  return {
    ...base,
    rollsBack: runId,
    intentFor: (tenant) => {
      const own = batches.get(tenant.schema);
      if (own) return { direction: 'down', scope: { kind: 'batch', batch: own.batch, names: own.names, cascade } };
      return {
        skip: failedIn.has(tenant.schema)
          ? `run ${runId} failed on it, so it has nothing of that run to roll back (left as it is)`
          : `run ${runId} did not migrate it (left as it is)`,
      };
    },
  };
}

async function runBatches(
  knex: Knex,
  runId: number,
): Promise<{ batches: Map<string, RunBatch>; failedIn: Set<string> }> {
  const run = await knex.raw(`select kind, direction from public.${RUNS} where id = ?`, [runId]);
  const row = run.rows[0] as { kind: string; direction: string } | undefined;
  if (!row) throw new RollbackRefusedError(`There is no run ${runId} in the ledger (see \`pnpm migrate:runs --all\`)`);
  if (row.kind === 'run') {
    throw new RollbackRefusedError(
      `Run ${runId} is a tenants:run: it applied no migrations, so there is nothing to roll back`,
    );
  }
  if (row.direction !== 'up') {
    throw new RollbackRefusedError(`Run ${runId} is a rollback: migrate again to re-apply what it rolled back`);
  }
  const rows = await knex.raw(
    `select schema_name, outcome, batch, migrations from public.${RUN_TENANTS} where run_id = ?`,
    [runId],
  );
  const batches = new Map<string, RunBatch>();
  const failedIn = new Set<string>();
  for (const r of rows.rows as { schema_name: string; outcome: string; batch: number | null; migrations: string[] }[]) {
    if (r.outcome === 'migrated' && r.batch !== null && r.migrations.length > 0) {
      batches.set(r.schema_name, { batch: Number(r.batch), names: r.migrations });
    } else if (r.outcome === 'failed' && r.migrations.length === 0) failedIn.add(r.schema_name);
    else if (r.batch !== null && r.migrations.length > 0) {
      // A `transaction: false` batch that failed part-way: what it committed is its to undo.
      batches.set(r.schema_name, { batch: Number(r.batch), names: r.migrations });
    }
  }
  return { batches, failedIn };
}

/** Refuses (exit 2) when a later batch sits on the run's batch in any tenant, naming tenants and runs. */
async function refuseIfCovered(
  knex: Knex,
  migrations: readonly Migration[],
  runId: number,
  batches: ReadonlyMap<string, RunBatch>,
  orgIds: readonly string[] | undefined,
): Promise<void> {
  const tenants = (await listTenants(knex, orgIds ? { orgIds } : {})).filter((t) => batches.has(t.schema));
  const covered: string[] = [];
  for await (const states of scanSchemas(
    knex,
    tenants.map((t) => t.schema),
    TENANT_TRACKING_TABLE,
    2,
  )) {
    for (const [schema, state] of states) {
      const own = batches.get(schema)!;
      const plan = planDown(migrations, state.applied, { kind: 'batch', ...own, cascade: false });
      if (plan.blockedBy.length > 0) covered.push(schema);
    }
  }
  if (covered.length === 0) return;
  const later = await knex.raw(
    `select schema_name, array_agg(distinct run_id order by run_id) as runs from public.${RUN_TENANTS}
      where schema_name = any(?::text[]) and run_id > ? and direction = 'up' and outcome = 'migrated'
      group by schema_name`,
    [covered, runId],
  );
  const byRun = new Map((later.rows as { schema_name: string; runs: string[] }[]).map((r) => [r.schema_name, r.runs]));
  const orgOf = new Map(tenants.map((t) => [t.schema, t.orgId]));
  const shown = covered.slice(0, 10).map((schema) => {
    const runs = byRun.get(schema);
    return `${orgOf.get(schema)} (${runs ? `run ${runs.join(', ')}` : 'a batch applied outside the toolkit'})`;
  });
  const more = covered.length > 10 ? ` and ${covered.length - 10} more` : '';
  throw new RollbackRefusedError(
    `Run ${runId} has later batches on top in ${covered.length} tenant${covered.length === 1 ? '' : 's'}: ` +
      `${shown.join(', ')}${more}; roll those back first, or add --cascade to roll them back too`,
  );
}
