import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { loadConfig, type ToolkitConfig } from '../../src/config/config.ts';

/** The repository root, for migration folders and the CLI entry point. */
export const ROOT = path.resolve(import.meta.dirname, '..', '..');
export const FIXTURES = path.join(ROOT, 'test', 'fixtures');

/**
 * A real PostgreSQL for one test file, chosen as CI chooses: TEST_DATABASE_URL (a fresh
 * database is created on that server), else a testcontainers pgvector/pgvector container when
 * a Docker engine answers, else the embedded PGlite in a fresh temporary folder.
 */
export interface TestEngine {
  readonly kind: 'server' | 'container' | 'embedded';
  /** Several sessions at once (false on PGlite: one backend, one process at a time). */
  readonly multiSession: boolean;
  /** Whether `CREATE EXTENSION vector` can work here. */
  readonly hasVector: boolean;
  /** Environment that points the toolkit (in-process or a child CLI) at this database. */
  readonly env: Readonly<Record<string, string>>;
  /** A validated config for this database, with overrides (e.g. TENANT_MIGRATIONS_DIR). */
  config(overrides?: Record<string, string>): ToolkitConfig;
  /** A plain `pg` connection string (server kinds only). */
  readonly url: string | undefined;
  stop(): Promise<void>;
}

export async function startEngine(label: string): Promise<TestEngine> {
  const base = process.env.TEST_DATABASE_URL;
  if (base) return serverEngine('server', base, label, async () => undefined);
  if (await dockerAnswers()) {
    const { PostgreSqlContainer } = await import('@testcontainers/postgresql');
    const container = await new PostgreSqlContainer('pgvector/pgvector:pg17').start();
    return serverEngine('container', container.getConnectionUri(), label, async () => void (await container.stop()));
  }
  return embeddedEngine(label);
}

async function dockerAnswers(): Promise<boolean> {
  if (!process.env.DOCKER_HOST && !existsSync('/var/run/docker.sock')) return false;
  try {
    const { getContainerRuntimeClient } = await import('testcontainers');
    await getContainerRuntimeClient();
    return true;
  } catch {
    return false;
  }
}

async function serverEngine(
  kind: 'server' | 'container',
  baseUrl: string,
  label: string,
  after: () => Promise<void>,
): Promise<TestEngine> {
  const name = `t_${label.replace(/[^a-z0-9]/gi, '_').toLowerCase()}_${process.pid}_${Date.now().toString(36)}`.slice(
    0,
    63,
  );
  const admin = new pg.Client({ connectionString: baseUrl });
  await admin.connect();
  await admin.query(`create database "${name}"`);
  const url = new URL(baseUrl);
  url.pathname = `/${name}`;
  const probe = new pg.Client({ connectionString: url.toString() });
  await probe.connect();
  const vector = await probe.query("select 1 from pg_available_extensions where name = 'vector'");
  await probe.end();
  const env = { DATABASE_URL: url.toString() };
  return {
    kind,
    multiSession: true,
    hasVector: vector.rowCount === 1,
    env,
    url: url.toString(),
    config: (overrides = {}) => loadConfig({ ...env, ...overrides }, ROOT),
    stop: async () => {
      await admin.query(`drop database if exists "${name}" with (force)`);
      await admin.end();
      await after();
    },
  };
}

function embeddedEngine(label: string): TestEngine {
  const dir = mkdtempSync(path.join(os.tmpdir(), `pglite-${label}-`));
  const env = { PGLITE_DATA_DIR: dir };
  return {
    kind: 'embedded',
    multiSession: false,
    hasVector: true,
    env,
    url: undefined,
    config: (overrides = {}) => loadConfig({ ...env, ...overrides }, ROOT),
    stop: async () => rmSync(dir, { recursive: true, force: true }),
  };
}
