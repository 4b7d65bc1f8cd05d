import { type CommandRun, commandMeasurements, NODE_ONLY, runCommand } from '../cli.ts';
import { seedFleet } from '../seed.ts';
import { withFreshDatabase } from '../server.ts';
import { toolkitEnv } from './toolkit.ts';
import type { Measurement, Variant } from './types.ts';

/** Tenants in the up-to-date database of the `migrate:status` start-up row. */
const TENANTS = 10;
/** Runs of each command, interleaved (start-up times are short and noisy). */
const RUNS = { full: 15, smoke: 3 };

/**
 * Start-up of the built CLI as whole processes: `node -e 0` (Node's own start, the floor on
 * this machine), `tenant-migrate --help`, and `migrate:status` against an up-to-date database of
 * 10 tenants. Interleaved so that a burst of load on the machine hits all three alike.
 */
export const startup: Variant = {
  name: 'startup',
  description: `CLI start-up: node -e 0, --help, and migrate:status on ${TENANTS} up-to-date tenants`,
  run: (ctx) =>
    withFreshDatabase(ctx.server, 'startup', async (database): Promise<Measurement[]> => {
      await seedFleet(ctx.server, database, TENANTS);
      const env = toolkitEnv(ctx.server, database);
      await runCommand(['migrate:tenants'], env);
      const runs: Record<'node' | 'help' | 'status', CommandRun[]> = { node: [], help: [], status: [] };
      for (let i = 0; i < (ctx.big <= 1000 ? RUNS.smoke : RUNS.full); i++) {
        runs.node.push(await runCommand([NODE_ONLY], env));
        runs.help.push(await runCommand(['--help'], env));
        runs.status.push(await runCommand(['migrate:status'], env));
      }
      return [
        ...commandMeasurements('startup.node', 0, runs.node),
        ...commandMeasurements('startup.help', 0, runs.help, { rss: true }),
        ...commandMeasurements('startup.status', TENANTS, runs.status, { rss: true }),
      ];
    }),
};
