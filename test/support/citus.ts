import pg from 'pg';

/**
 * A fresh database on a real Citus cluster for one test file. Each Citus database is separate
 * (its own extension, its own node list), so a new one is made the way Citus wants it:
 * 1. `CREATE DATABASE` on the coordinator with `citus.enable_create_database_propagation`, which
 *    creates it on every worker too (and `DROP DATABASE` the same way removes it everywhere);
 * 2. `CREATE EXTENSION citus` in it on each worker (the nodes of the admin database's
 *    `pg_dist_node`), then on the coordinator;
 * 3. on the coordinator, `citus_set_coordinator_host` and `citus_add_node` for each worker.
 * About a second on the local three-node cluster (`/work/shared/citus/setup.sh`).
 */
export interface CitusDatabase {
  /** The coordinator's URL for the new database. */
  readonly url: string;
  /** Workers as `host:port`. */
  readonly workers: readonly string[];
  /** `host:port` of the coordinator. */
  readonly coordinator: string;
  drop(): Promise<void>;
}

/** The cluster answers and its coordinator has Citus (a short connect timeout: a missing cluster is told fast). */
export async function citusAnswers(url: string): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3000 });
  try {
    await client.connect();
    const ext = await client.query("select extversion from pg_extension where extname = 'citus'");
    return ext.rowCount === 1 ? undefined : 'the citus extension is not installed there';
  } catch (error) {
    return (error as Error).message;
  } finally {
    await client.end().catch(() => undefined);
  }
}

export async function createCitusDatabase(adminUrl: string, label: string): Promise<CitusDatabase> {
  const name = `citus_${label}_${process.pid}_${Date.now().toString(36)}`.toLowerCase().replace(/[^a-z0-9_]/g, '_');
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  const nodes = await admin.query<{ groupid: number; nodename: string; nodeport: number }>(
    "select groupid, nodename, nodeport from pg_dist_node where noderole = 'primary' order by groupid",
  );
  const at = (n: { nodename: string; nodeport: number }): string => `${n.nodename}:${n.nodeport}`;
  const workerNodes = nodes.rows.filter((n) => Number(n.groupid) !== 0);
  const base = new URL(adminUrl);
  const coordinator = `${base.hostname}:${base.port || '5432'}`;
  await admin.query('set citus.enable_create_database_propagation to on');
  await admin.query(`create database "${name}"`);
  const urlFor = (host: string, port: number | string): string => {
    const url = new URL(adminUrl);
    url.hostname = host;
    url.port = String(port);
    url.pathname = `/${name}`;
    return url.toString();
  };
  const run = async (url: string, statements: readonly string[], values: unknown[][] = []): Promise<void> => {
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      for (const [i, sql] of statements.entries()) await client.query(sql, values[i] ?? []);
    } finally {
      await client.end();
    }
  };
  for (const w of workerNodes) await run(urlFor(w.nodename, w.nodeport), ['create extension if not exists citus']);
  const url = urlFor(base.hostname, base.port || '5432');
  await run(
    url,
    [
      'create extension if not exists citus',
      'select citus_set_coordinator_host($1, $2)',
      ...workerNodes.map(() => 'select citus_add_node($1, $2)'),
    ],
    [[], [base.hostname, Number(base.port || 5432)], ...workerNodes.map((w) => [w.nodename, Number(w.nodeport)])],
  );
  return {
    url,
    workers: workerNodes.map(at),
    coordinator,
    drop: async () => {
      await admin.query(`drop database if exists "${name}" with (force)`);
      await admin.end();
    },
  };
}
