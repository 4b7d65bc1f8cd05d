import { type CommandRun, commandMeasurements, runCommand } from '../cli.ts';
import { type FleetPart, seedSpreadFleet, verifySpreadFleet } from '../seed.ts';
import { openServer, type Server, withFreshDatabase, withFreshDatabases } from '../server.ts';
import { toolkitEnv } from './toolkit.ts';
import type { Measurement, Variant } from './types.ts';

/** The extra servers when BENCH_SERVER_URLS is not set: the clusters `.ci/run` creates. */
const DEFAULT_PORTS = [5433, 5434] as const;

/** The extra servers are missing, too few, or do not answer: one line, exit code 2. */
export class ServersUnavailableError extends Error {}

/**
 * The admin URLs of the `count` servers beside the main one: the first `count` of
 * BENCH_SERVER_URLS (comma-separated), else 127.0.0.1:5433 and :5434 as the main server's user.
 */
export function extraServerUrls(env: Record<string, string | undefined>, main: Server, count: number): string[] {
  const given = env.BENCH_SERVER_URLS?.split(',')
    .map((url) => url.trim())
    .filter(Boolean);
  const urls =
    given && given.length > 0
      ? given
      : DEFAULT_PORTS.map((port) => {
          const url = new URL(`postgres://127.0.0.1:${port}/postgres`);
          if (main.user !== undefined) url.username = encodeURIComponent(main.user);
          return url.toString();
        });
  if (urls.length < count) {
    const source = given && given.length > 0 ? 'BENCH_SERVER_URLS names' : 'the default is';
    throw new ServersUnavailableError(
      `--servers ${count + 1} needs ${count} servers beside the main one; ${source} ${urls.length} (${urls.map(hostPort).join(', ')}): set BENCH_SERVER_URLS to more admin URLs, comma-separated`,
    );
  }
  return urls.slice(0, count);
}

/**
 * Connects to each extra server (as the bench connects to the main one); throws
 * ServersUnavailableError, closing what it opened, when one does not answer or two are the same.
 */
export async function openExtraServers(main: Server, urls: readonly string[]): Promise<Server[]> {
  const opened: Server[] = [];
  try {
    for (const url of urls) {
      const server = await openServer({ DATABASE_URL: url }).catch((error: Error) => {
        throw new ServersUnavailableError(`--servers: ${error.message.split('\n')[0]}`);
      });
      opened.push(server);
      const twice = [main, ...opened.slice(0, -1)].find((other) => other.describe === server.describe);
      if (twice)
        throw new ServersUnavailableError(
          `--servers: ${server.describe} is named twice (the main server or BENCH_SERVER_URLS): each layout needs servers of its own`,
        );
    }
    return opened;
  } catch (error) {
    await Promise.all(opened.map((server) => server.close().catch(() => undefined)));
    throw error;
  }
}

/** Names of the extra servers in TENANT_SERVERS: eu1, eu2, … */
export const serverName = (index: number): string => `eu${index + 1}`;

/**
 * The fan-out over several servers against one server, with the same tenants and the same pool
 * per server (DB_POOL_MAX, `pool_max=` on each TENANT_SERVERS entry), alternated `repeat` times,
 * each layout on fresh databases: all tenants on the main server, then `migrate:tenants` (whole
 * command) and its no-op rerun; or the registry on the main server and the tenants spread
 * round-robin over main and `extras`, each schema on its own server, then the same commands with
 * TENANT_SERVERS set. Both layouts are checked on every server after the run.
 */
export function servers(extras: readonly Server[]): Variant {
  return {
    name: 'servers',
    description: `migrate:tenants with the tenants on one server, then spread over ${extras.length + 1} servers`,
    run: async (ctx) => {
      const one: CommandRun[] = [];
      const oneNoop: CommandRun[] = [];
      const many: CommandRun[] = [];
      const manyNoop: CommandRun[] = [];
      const onOne = (): Promise<void> =>
        withFreshDatabase(ctx.server, 'servers_one', async (database) => {
          // The usual seed (seedFleet), checked as the spread layout is: every schema and the registry's books.
          const parts: FleetPart[] = [{ server: ctx.server, database, name: null }];
          await seedSpreadFleet(parts, ctx.tenants);
          const env = toolkitEnv(ctx.server, database);
          one.push(await runCommand(['migrate:tenants'], env));
          await verifySpreadFleet(parts, ctx.tenants);
          oneNoop.push(await runCommand(['migrate:tenants'], env));
        });
      const onMany = (): Promise<void> =>
        withFreshDatabases([ctx.server, ...extras], 'servers_many', async (databases) => {
          const parts: FleetPart[] = [ctx.server, ...extras].map((server, i) => ({
            server,
            database: databases[i]!,
            name: i === 0 ? null : serverName(i - 1),
          }));
          await seedSpreadFleet(parts, ctx.tenants);
          const env = { ...toolkitEnv(ctx.server, databases[0]!), TENANT_SERVERS: tenantServers(parts, ctx.server) };
          many.push(await runCommand(['migrate:tenants'], env));
          await verifySpreadFleet(parts, ctx.tenants);
          manyNoop.push(await runCommand(['migrate:tenants'], env));
        });
      for (let r = 0; r < ctx.repeat; r++) {
        // Alternated, so that drift in the machine's load falls on both layouts alike.
        for (const layout of r % 2 === 0 ? [onOne, onMany] : [onMany, onOne]) await layout();
        ctx.log(
          `  round ${r + 1}: one server ${seconds(one.at(-1)!)}, ${extras.length + 1} servers ${seconds(many.at(-1)!)}`,
        );
      }
      const measurements: Measurement[] = [
        ...commandMeasurements('servers.one', ctx.tenants, one),
        ...commandMeasurements('servers.many', ctx.tenants, many),
        ...commandMeasurements('servers.one.noop', ctx.tenants, oneNoop),
        ...commandMeasurements('servers.many.noop', ctx.tenants, manyNoop),
      ];
      return measurements;
    },
  };
}

/** TENANT_SERVERS for the extra parts, each with the main server's pool size (`pool_max=`): the same pool per server. */
function tenantServers(parts: readonly FleetPart[], main: Server): string {
  return parts
    .slice(1)
    .map((part) => {
      const url = new URL(part.server.envFor(part.database).DATABASE_URL!);
      url.searchParams.set('pool_max', String(main.poolMax));
      return `${part.name}=${url.toString()}`;
    })
    .join(',');
}

const seconds = (run: CommandRun): string => `${(run.ms / 1000).toFixed(1)} s`;

function hostPort(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.hostname}:${parsed.port || '5432'}`;
  } catch {
    return 'an unreadable URL';
  }
}
