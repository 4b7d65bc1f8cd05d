import { type CommandRun, commandMeasurements, runCommand } from '../cli.ts';
import { seedFleet, verifyFleet } from '../seed.ts';
import { withFreshDatabase } from '../server.ts';
import { toolkitEnv } from './toolkit.ts';
import type { Measurement, Variant } from './types.ts';

/**
 * The large fleet (default 10,000 tenants), built once: `migrate:tenants` over it (its time
 * and peak RSS), then the no-op rerun and `migrate:status`, alternated `repeat` times, each
 * as the whole command, then `migrate:status --verify` (every tracking table read) and
 * `migrate:status --drift` (every schema fingerprinted) once each. Status output is read and
 * dropped as a pipe would.
 */
export const big: Variant = {
  name: 'big',
  description: 'large fleet: migrate:tenants once, then no-op reruns and migrate:status',
  run: (ctx) =>
    withFreshDatabase(ctx.server, 'big', async (database): Promise<Measurement[]> => {
      await seedFleet(ctx.server, database, ctx.big);
      const env = toolkitEnv(ctx.server, database);
      const migrate = await runCommand(['migrate:tenants'], env);
      await verifyFleet(ctx.server, database, ctx.big);
      ctx.log(`  migrate:tenants over ${ctx.big} tenants: ${(migrate.ms / 1000).toFixed(1)} s`);
      const noop: CommandRun[] = [];
      const status: CommandRun[] = [];
      for (let r = 0; r < ctx.repeat; r++) {
        noop.push(await runCommand(['migrate:tenants'], env));
        status.push(await runCommand(['migrate:status'], env));
      }
      const verify = await runCommand(['migrate:status', '--verify'], env);
      const drift = await runCommand(['migrate:status', '--drift'], env);
      return [
        ...commandMeasurements('migrate.toolkit.big', ctx.big, [migrate], { rss: true }),
        ...commandMeasurements('noop.toolkit.big', ctx.big, noop, { rss: true }),
        ...commandMeasurements('status.toolkit.big', ctx.big, status, { rss: true }),
        ...commandMeasurements('status-verify.toolkit.big', ctx.big, [verify], { rss: true }),
        ...commandMeasurements('status-drift.toolkit.big', ctx.big, [drift], { rss: true }),
      ];
    }),
};
