import { commandMeasurements, runCommand } from '../cli.ts';
import { benchOverrides, seedFleet, verifyFleet } from '../seed.ts';
import { type Server, withFreshDatabase } from '../server.ts';
import type { Measurement, Variant } from './types.ts';

/** The environment a user would give `pnpm migrate:tenants`: the bench database, the bench migrations, no extensions. */
export function toolkitEnv(server: Server, database: string): Record<string, string> {
  return { ...server.envFor(database), ...benchOverrides(), DB_POOL_MAX: String(server.poolMax) };
}

/**
 * `migrate:tenants` as the whole command a user runs (process start-up, TypeScript loading,
 * connecting, prescan, fan-out, report), then the same command again with every tenant up to
 * date (the no-op deploy). Also `--help`, the start-up every command pays before any work.
 */
export const toolkit: Variant = {
  name: 'toolkit',
  description: 'the toolkit: migrate:tenants as a whole command, then its no-op rerun',
  run: (ctx) =>
    withFreshDatabase(ctx.server, 'toolkit', async (database): Promise<Measurement[]> => {
      await seedFleet(ctx.server, database, ctx.tenants);
      const env = toolkitEnv(ctx.server, database);
      const migrate = await runCommand(['migrate:tenants'], env);
      await verifyFleet(ctx.server, database, ctx.tenants);
      const noop = await runCommand(['migrate:tenants'], env);
      const startup = await runCommand(['--help'], env);
      return [
        ...commandMeasurements('migrate.toolkit', ctx.tenants, [migrate], { rss: true }),
        ...commandMeasurements('noop.toolkit', ctx.tenants, [noop]),
        ...commandMeasurements('startup.cli', 0, [startup], { rss: true }),
      ];
    }),
};
