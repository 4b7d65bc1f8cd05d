import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EmbeddedServer, LOCK_FILE, startEmbedded } from '../src/db/embedded.ts';
import { EmbeddedLockedError } from '../src/errors.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const EMBEDDED_MODULE = pathToFileURL(path.join(ROOT, 'src/db/embedded.ts')).href;

// Another process contending for a folder: prints READY, tries to open the folder when it reads
// a line, prints WON or LOST <message>, and if it won holds the folder until its stdin closes.
const CONTENDER = `
import readline from 'node:readline';
const { startEmbedded } = await import(process.env.EMBEDDED_MODULE);
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
console.log('READY');
await lines.next();
try {
  const server = await startEmbedded(process.env.DATA_DIR);
  console.log('WON');
  await lines.next();
  await server.stop();
} catch (error) {
  console.log('LOST ' + error.message);
}
process.exit(0);
`;

const tempDirs: string[] = [];
let template = '';

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'embedded-test-'));
  tempDirs.push(dir);
  return dir;
}

/** A folder of its own for one test, holding an initialised database (a warm start). */
function databaseFolder(): string {
  const dir = path.join(tempDir(), '.pglite');
  fs.cpSync(template, dir, { recursive: true });
  return dir;
}

async function withClient<T>(server: EmbeddedServer, cb: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ host: server.host, port: server.port, user: 'postgres', database: 'postgres' });
  await client.connect();
  try {
    return await cb(client);
  } finally {
    await client.end();
  }
}

/** Starts `count` processes, lets them open `dataDir` all at once, and returns what each got. */
async function race(dataDir: string, count: number): Promise<string[]> {
  const children = Array.from({ length: count }, () => spawnContender(dataDir));
  const exits = children.map((child) => once(child, 'exit'));
  const outputs = children.map((child) => readline.createInterface({ input: child.stdout })[Symbol.asyncIterator]());
  const nextLines = () =>
    Promise.all(outputs.map(async (out) => ((await out.next()).value as string | undefined) ?? '(exited)'));
  try {
    expect(await nextLines()).toEqual(Array(count).fill('READY'));
    for (const child of children) child.stdin.write('go\n');
    return await nextLines();
  } finally {
    for (const child of children) child.stdin.end(); // winners stop and exit
    await Promise.all(exits);
  }
}

function spawnContender(dataDir: string): ChildProcessWithoutNullStreams {
  return spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CONTENDER], {
    cwd: ROOT,
    env: { ...process.env, EMBEDDED_MODULE, DATA_DIR: dataDir },
  });
}

/** The pid of a process that has exited. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', '']);
  await once(child, 'exit');
  return child.pid!;
}

// Creating a database runs initdb (several seconds); do it once, through startEmbedded, and give
// each test a copy so that every test has its own folder yet starts warm.
beforeAll(async () => {
  template = path.join(tempDir(), 'template');
  const server = await startEmbedded(template);
  await server.stop();
}, 120_000);

afterAll(() => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

describe('startEmbedded', { timeout: 60_000 }, () => {
  it('serves the database on a loopback port, with pgvector', async () => {
    const dataDir = databaseFolder();
    const server = await startEmbedded(dataDir);
    try {
      expect(server).toMatchObject({ host: '127.0.0.1', dataDir: path.resolve(dataDir) });
      expect(server.port).toBeGreaterThan(0);
      await withClient(server, async (client) => {
        await client.query('CREATE EXTENSION IF NOT EXISTS vector');
        await client.query('CREATE TABLE items (id int PRIMARY KEY, embedding vector(3))');
        await client.query(`INSERT INTO items VALUES (1, '[1,0,0]'), (2, '[0,1,0]')`);
        const { rows } = await client.query('SELECT id FROM items ORDER BY embedding <-> $1 LIMIT 1', ['[0.1,0.9,0]']);
        expect(rows).toEqual([{ id: 2 }]);
      });
    } finally {
      await server.stop();
    }
  });

  it('rolls back transactions and releases transaction-scoped advisory locks', async () => {
    const server = await startEmbedded(databaseFolder());
    try {
      await withClient(server, async (client) => {
        const advisoryLocks = async () =>
          (await client.query(`SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory'`)).rows[0].n;
        await client.query('CREATE TABLE t (x int)');
        await client.query('BEGIN');
        await client.query('INSERT INTO t VALUES (1)');
        await client.query('SELECT pg_advisory_xact_lock(42)');
        expect(await advisoryLocks()).toBe(1);
        await client.query('ROLLBACK');
        expect((await client.query('SELECT count(*)::int AS n FROM t')).rows[0].n).toBe(0);
        expect(await advisoryLocks()).toBe(0);
      });
    } finally {
      await server.stop();
    }
  });

  it('drops a second client while one is attached, without disturbing the first', async () => {
    const server = await startEmbedded(databaseFolder());
    try {
      await withClient(server, async (first) => {
        const second = new pg.Client({ host: server.host, port: server.port, user: 'postgres', database: 'postgres' });
        await expect(second.connect()).rejects.toThrow(/Connection terminated unexpectedly/);
        expect((await first.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      });
    } finally {
      await server.stop();
    }
  });

  it('keeps data across stop and start, and stop is idempotent', async () => {
    const dataDir = databaseFolder();
    const first = await startEmbedded(dataDir);
    await withClient(first, (client) =>
      client.query(`CREATE TABLE kept (note text); INSERT INTO kept VALUES ('still here')`),
    );
    await Promise.all([first.stop(), first.stop()]);
    await first.stop();
    expect(fs.existsSync(path.join(dataDir, LOCK_FILE))).toBe(false);

    const second = await startEmbedded(dataDir);
    try {
      const { rows } = await withClient(second, (client) => client.query('SELECT note FROM kept'));
      expect(rows).toEqual([{ note: 'still here' }]);
    } finally {
      await second.stop();
    }
  });

  it('refuses to open a folder this process already has open', async () => {
    const dataDir = databaseFolder();
    const server = await startEmbedded(dataDir);
    try {
      const again = startEmbedded(dataDir);
      await expect(again).rejects.toThrow(EmbeddedLockedError);
      await expect(again).rejects.toThrow(/is already open in this process/);
    } finally {
      await server.stop();
    }
    // Two calls at once: exactly one opens it.
    const results = await Promise.allSettled([startEmbedded(dataDir), startEmbedded(dataDir)]);
    const opened = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    expect(opened).toHaveLength(1);
    await opened[0]!.stop();
  });

  it('refuses another process a folder this process holds, with one clear line', async () => {
    const dataDir = databaseFolder();
    const server = await startEmbedded(dataDir);
    try {
      expect(await race(dataDir, 1)).toEqual([
        `LOST The embedded database at ${dataDir} is in use by another process (pid ${process.pid}); stop it or set PGLITE_DATA_DIR to another folder`,
      ]);
    } finally {
      await server.stop();
    }
  });

  it('refuses a folder that holds other files and no database, and writes nothing there', async () => {
    const dataDir = tempDir();
    fs.writeFileSync(path.join(dataDir, 'notes.txt'), 'not a database');
    await expect(startEmbedded(dataDir)).rejects.toThrow(/is not empty and holds no embedded database/);
    expect(fs.readdirSync(dataDir)).toEqual(['notes.txt']);
  });

  it('takes over a stale lock left by a dead process', async () => {
    const dataDir = databaseFolder();
    const lockFile = path.join(dataDir, LOCK_FILE);
    fs.writeFileSync(lockFile, `${await deadPid()}\n`);
    const server = await startEmbedded(dataDir);
    expect(fs.readFileSync(lockFile, 'utf8').trim()).toBe(String(process.pid));
    await server.stop();
    expect(fs.existsSync(lockFile)).toBe(false);
  });

  it('lets exactly one of several processes take over the same stale lock', async () => {
    const dataDir = databaseFolder();
    fs.writeFileSync(path.join(dataDir, LOCK_FILE), `${await deadPid()}\n`);
    const verdicts = await race(dataDir, 3);
    expect(verdicts.filter((v) => v === 'WON')).toHaveLength(1);
    for (const verdict of verdicts.filter((v) => v !== 'WON'))
      expect(verdict).toMatch(/^LOST .* is in use by another process \(pid \d+\)/);
  });
});
