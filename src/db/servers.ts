import knexFactory, { type Knex } from 'knex';
import { describeServer, MAIN_SERVER, type TenantServerConfig, type ToolkitConfig } from '../config/config.ts';
import { UsageError } from '../errors.ts';
import { knexConfigFor } from './connection.ts';

/** A server name that is neither `main` nor in TENANT_SERVERS (e.g. a registry row written under another configuration). */
export class UnknownServerError extends UsageError {
  readonly server: string;

  constructor(server: string, known: readonly string[]) {
    super(`no server named "${server}" is configured (known: ${known.join(', ')}; see TENANT_SERVERS)`, {
      code: 'E_UNKNOWN_SERVER',
    });
    this.server = server;
  }
}

/**
 * The PostgreSQL servers tenant schemas live on: `main` (DATABASE_URL, whose pool the caller
 * owns) and those of TENANT_SERVERS. A server's pool is opened on first use and kept; `close()`
 * destroys only those, never the main Knex.
 */
export class Servers {
  /** `main` first, then TENANT_SERVERS in the order given. */
  readonly names: readonly string[];
  readonly #config: ToolkitConfig;
  readonly #main: Knex;
  readonly #byName: ReadonlyMap<string, TenantServerConfig>;
  readonly #open = new Map<string, Knex>();

  constructor(config: ToolkitConfig, main: Knex) {
    this.#config = config;
    this.#main = main;
    this.#byName = new Map(config.servers.map((server) => [server.name, server]));
    this.names = [MAIN_SERVER, ...config.servers.map((server) => server.name)];
  }

  has(name: string): boolean {
    return name === MAIN_SERVER || this.#byName.has(name);
  }

  /**
   * The Knex of a server: the main one for `null` (a registry row without a server) or `main`,
   * else that server's own pool, opened now if this is its first use. Throws
   * UnknownServerError for a name that is not configured.
   */
  knexFor(name: string | null): Knex {
    if (name === null || name === MAIN_SERVER) return this.#main;
    const opened = this.#open.get(name);
    if (opened !== undefined) return opened;
    const server = this.#server(name);
    const knex = knexFactory(knexConfigFor(server.target, server.poolMax));
    this.#open.set(name, knex);
    return knex;
  }

  /** Connections in a server's pool (`pool_max=`; the main server's is DB_POOL_MAX). */
  poolMax(name: string): number {
    return name === MAIN_SERVER ? this.#config.poolMax : this.#server(name).poolMax;
  }

  /** `host:port/database` of a server, for messages: never a user or a password. */
  describe(name: string): string {
    if (name === MAIN_SERVER) {
      const main = this.#config.connection;
      return main.kind === 'server' ? describeServer(main) : `embedded database at ${main.dataDir}`;
    }
    return describeServer(this.#server(name).target);
  }

  /** Each server's share of new tenants (MAIN_SERVER_WEIGHT, `weight=`), in the order of `names`. */
  weights(): ReadonlyMap<string, number> {
    return new Map([
      [MAIN_SERVER, this.#config.mainServerWeight],
      ...this.#config.servers.map((server) => [server.name, server.weight] as const),
    ]);
  }

  /** Destroys the pools this object opened (the main Knex stays open); a later `knexFor` opens anew. */
  async close(): Promise<void> {
    const pools = [...this.#open.values()];
    this.#open.clear();
    await Promise.all(pools.map((knex) => knex.destroy()));
  }

  #server(name: string): TenantServerConfig {
    const server = this.#byName.get(name);
    if (server === undefined) throw new UnknownServerError(name, this.names);
    return server;
  }
}

/**
 * The server a new tenant goes to: the one with the fewest tenants per unit of weight (`counts`
 * missing a server means it has none), ties going to the earlier name in `weights`' order, `main`
 * first. A server of weight 0 receives none; undefined when every weight is 0. Pure.
 */
export function placeTenant(
  counts: ReadonlyMap<string, number>,
  weights: ReadonlyMap<string, number>,
): string | undefined {
  const order = weights.has(MAIN_SERVER)
    ? [MAIN_SERVER, ...[...weights.keys()].filter((name) => name !== MAIN_SERVER)]
    : [...weights.keys()];
  let best: { name: string; count: number; weight: number } | undefined;
  for (const name of order) {
    const weight = weights.get(name) ?? 0;
    if (!(weight > 0)) continue;
    const count = counts.get(name) ?? 0;
    // count / weight < best.count / best.weight, multiplied out: exact for whole numbers.
    if (best === undefined || count * best.weight < best.count * weight) best = { name, count, weight };
  }
  return best?.name;
}
