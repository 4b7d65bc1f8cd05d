import { commandMeasurements, runCommand } from '../cli.ts';
import { seedFleet, verifyFleet } from '../seed.ts';
import { withFreshDatabase } from '../server.ts';
import { toolkitEnv } from './toolkit.ts';
import type { BenchContext, Measurement, Variant } from './types.ts';

/**
 * What the toolkit's safety costs, each on its own fresh fleet, as whole commands: the dry-run of
 * the deploy (it does the same work, then rolls back), and the deploy without the escape guard
 * (`ESCAPE_GUARD=off`) and without the run ledger (its tables dropped), to set against
 * `migrate.toolkit`, which has both.
 */
export const costs: Variant = {
  name: 'costs',
  description: 'migrate:tenants --dry-run; migrate:tenants without the escape guard; without the run ledger',
  run: async (ctx: BenchContext): Promise<Measurement[]> => [
    ...(await withFreshDatabase(ctx.server, 'dryrun', async (database) => {
      await seedFleet(ctx.server, database, ctx.tenants);
      const run = await runCommand(['migrate:tenants', '--dry-run'], toolkitEnv(ctx.server, database));
      return commandMeasurements('migrate.dryrun', ctx.tenants, [run]);
    })),
    ...(await withFreshDatabase(ctx.server, 'noguard', async (database) => {
      await seedFleet(ctx.server, database, ctx.tenants);
      const env = { ...toolkitEnv(ctx.server, database), ESCAPE_GUARD: 'off' };
      const run = await runCommand(['migrate:tenants'], env);
      await verifyFleet(ctx.server, database, ctx.tenants);
      return commandMeasurements('migrate.noguard', ctx.tenants, [run]);
    })),
    ...(await withFreshDatabase(ctx.server, 'noledger', async (database) => {
      await seedFleet(ctx.server, database, ctx.tenants);
      const client = await ctx.server.client(database);
      try {
        await client.query('drop table public.tenant_migration_run_tenants, public.tenant_migration_runs');
      } finally {
        await client.end();
      }
      const run = await runCommand(['migrate:tenants'], toolkitEnv(ctx.server, database));
      await verifyFleet(ctx.server, database, ctx.tenants);
      return commandMeasurements('migrate.noledger', ctx.tenants, [run]);
    })),
  ],
};
