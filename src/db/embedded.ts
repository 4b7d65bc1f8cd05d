import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PGlite } from '@electric-sql/pglite';
import { vector } from '@electric-sql/pglite-pgvector';
import { PGLiteSocketServer } from '@electric-sql/pglite-socket';
import { ConnectionError, EmbeddedLockedError, messageOf, UsageError } from '../errors.ts';

/*
 * The embedded engine: PGlite (PostgreSQL compiled to WASM) with pgvector, served over TCP so
 * that the toolkit runs the same `pg`/Knex code against it as against a real server.
 *
 * Measured with PGlite 0.5.14 on Node 20 (quiet 2-CPU machine; under heavy load, 3 to 6x more):
 * - Startup: about 4.5 s on a new folder (WASM compile + initdb), 0.5 to 1 s on an existing one.
 *   PGlite prints nothing on its own (its output reaches the console only with `debug` set).
 * - PGlite is one backend, so the server accepts ONE client (maxConnections 1, no multiplexer).
 *   A second client connecting while one is attached is DROPPED, not queued: the server sets
 *   net.Server#maxConnections, Node closes the new socket at once and `pg` fails within a few ms
 *   with "Connection terminated unexpectedly"; the attached client is not disturbed. The slot
 *   frees only a tick after the old socket closes, so a pool that discards a connection and
 *   connects again at once is sometimes dropped too (Knex: 11 to 13 times in 30); the pool must
 *   retry a failed connect (Knex: pool.propagateCreateError false).
 * - A client that disconnects inside a transaction is rolled back by the server. BEGIN/ROLLBACK
 *   and pg_advisory_xact_lock behave as on a real server for the one session.
 * - SIGKILL mid-write leaves a folder that reopens (WAL recovery) with committed rows intact.
 * - PGlite itself does NOT lock its folder: two processes writing to one folder silently lost
 *   rows in a test. Hence the lock file below.
 */

const HOST = '127.0.0.1';
/** The lock file inside the data folder; it holds the pid of the process that has it open. */
export const LOCK_FILE = '.embedded.lock';
/** Held for the instant it takes to remove a stale lock, so that only one process removes it. */
const TAKEOVER_FILE = `${LOCK_FILE}.takeover`;
/** Where a new database is created before it is moved into the data folder. */
const STAGING_DIR = '.initdb';
/** A lock file still empty after this long was left by a process that died while creating it. */
const EMPTY_LOCK_GRACE_MS = 2_000;
const LOCK_ATTEMPTS = 100;
const LOCK_RETRY_MS = 20;

/** A running embedded database. */
export interface EmbeddedServer {
  readonly host: string;
  /** The port actually bound (the server listens on port 0, a free port). */
  readonly port: number;
  /** Absolute path of the data folder. */
  readonly dataDir: string;
  /** Stops the socket server, closes PGlite, releases the folder lock. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Folders this module has open, by real path. The lock file cannot tell a second open in this
 * process from a lock left by a dead process that had our pid (containers restart with the same
 * pids), so this set answers the first case and the lock file treats our own pid as stale.
 */
const openHere = new Set<string>();

/**
 * Opens (creating if needed) the PGlite database in dataDir with the vector extension loaded,
 * and serves it on a free loopback port. Throws EmbeddedLockedError if the folder is open in
 * another process or already in this one; the folder is never opened twice.
 */
export async function startEmbedded(dataDir: string): Promise<EmbeddedServer> {
  const shown = path.resolve(dataDir);
  const key = prepareFolder(shown);
  if (openHere.has(key)) {
    throw new EmbeddedLockedError(
      `The embedded database at ${shown} is already open in this process (pid ${process.pid}); stop it before starting it again`,
    );
  }
  openHere.add(key); // synchronously, before any await, so that two concurrent calls cannot both pass

  let lock: FolderLock | undefined;
  try {
    lock = await acquireFolderLock(key, shown);
    return await serve(key, shown, lock);
  } catch (error) {
    lock?.release();
    openHere.delete(key);
    throw error;
  }
}

/** Creates the folder if needed; returns its real path, which identifies it within this process. */
function prepareFolder(shown: string): string {
  try {
    fs.mkdirSync(shown, { recursive: true });
    return fs.realpathSync(shown);
  } catch (error) {
    throw new UsageError(`Cannot use ${shown} for the embedded database: ${messageOf(error)}`, { cause: error });
  }
}

async function serve(dir: string, shown: string, lock: FolderLock): Promise<EmbeddedServer> {
  await ensureCreated(dir, shown);
  const db = await openPglite(dir, shown);
  const server = new PGLiteSocketServer({ db, host: HOST, port: 0, maxConnections: 1 });
  try {
    await server.start();
  } catch (error) {
    await db.close().catch(() => undefined);
    throw error;
  }
  const stop = async (): Promise<void> => {
    try {
      await server.stop(); // drops the client; an open transaction is rolled back
      await db.close(); // a clean PostgreSQL shutdown
    } finally {
      lock.release();
      openHere.delete(dir);
    }
  };
  const port = Number(server.getServerConn().split(':').at(-1)); // "127.0.0.1:<bound port>"
  return Object.freeze({ host: HOST, port, dataDir: shown, stop: once(stop) });
}

/**
 * Creates the database in a staging folder and moves it in with PG_VERSION last. PGlite runs
 * initdb only when PG_VERSION is missing and cannot open a folder where initdb was killed after
 * writing it (measured: "PGlite failed to initialize properly"); this way a kill at any moment
 * of the first start leaves a folder that the next start simply creates again.
 */
async function ensureCreated(dir: string, shown: string): Promise<void> {
  const staging = path.join(dir, STAGING_DIR);
  if (fs.existsSync(path.join(dir, 'PG_VERSION'))) {
    fs.rmSync(staging, { recursive: true, force: true }); // killed after the move, before cleanup
    return;
  }
  const ours = new Set([LOCK_FILE, TAKEOVER_FILE, STAGING_DIR]);
  const others = fs.readdirSync(dir).filter((name) => !ours.has(name));
  // Files without a database and without our staging folder belong to someone else: never
  // write PostgreSQL files among them (PGlite would).
  if (others.length > 0 && !fs.existsSync(staging)) {
    throw new UsageError(
      `The folder ${shown} is not empty and holds no embedded database; set PGLITE_DATA_DIR to a new or empty folder`,
    );
  }
  // A staging folder means an earlier first start was killed: everything here is its leftovers.
  for (const name of [...others, STAGING_DIR]) fs.rmSync(path.join(dir, name), { recursive: true, force: true });
  await (await openPglite(staging, shown)).close();
  const names = fs.readdirSync(staging).filter((name) => name !== 'PG_VERSION');
  for (const name of [...names, 'PG_VERSION']) fs.renameSync(path.join(staging, name), path.join(dir, name));
  fs.rmdirSync(staging);
}

async function openPglite(dir: string, shown: string): Promise<PGlite> {
  try {
    return await PGlite.create({ dataDir: dir, extensions: { vector } });
  } catch (error) {
    throw new ConnectionError(`Cannot open the embedded database at ${shown}: ${messageOf(error)}`, error);
  }
}

function once(fn: () => Promise<void>): () => Promise<void> {
  let running: Promise<void> | undefined;
  return () => (running ??= fn());
}

// ---- The folder lock ------------------------------------------------------------------------
//
// `<dataDir>/.embedded.lock` is created with O_EXCL and holds the owner's pid. If it exists and
// that pid is dead, the lock is stale and is removed, then creation is retried; O_EXCL decides
// the winner among processes retrying together.
//
// The race: two processes read the same stale lock; A removes it and creates its own; B, still
// acting on what it read, would remove A's live lock. So removal happens only while holding a
// second O_EXCL file (the takeover file), after re-reading the lock: under it nobody else removes
// the lock, and a dead owner cannot release it, so a lock that still names the dead pid is the
// very file judged stale. The takeover file lives for microseconds; if its owner died in that
// window we cannot tell safely whether it is stale, so we stop and ask for it to be deleted.

interface FolderLock {
  release(): void;
}

interface Holder {
  /** undefined while the owner has created the file but not yet written its pid. */
  readonly pid: number | undefined;
  readonly ageMs: number;
}

async function acquireFolderLock(dir: string, shown: string): Promise<FolderLock> {
  const file = path.join(dir, LOCK_FILE);
  for (let attempt = 0; attempt < LOCK_ATTEMPTS; attempt++) {
    if (createWithPid(file)) return ownedLock(file);
    const holder = readHolder(file);
    if (holder === undefined) continue; // released between our attempt and the read
    if (holder.pid !== undefined && isAlive(holder.pid)) {
      throw new EmbeddedLockedError(
        `The embedded database at ${shown} is in use by another process (pid ${holder.pid}); stop it or set PGLITE_DATA_DIR to another folder`,
      );
    }
    if (holder.pid === undefined && holder.ageMs < EMPTY_LOCK_GRACE_MS) await sleep(LOCK_RETRY_MS);
    else await removeStale(dir, shown, holder);
  }
  throw new EmbeddedLockedError(
    `Could not lock the embedded database at ${shown}: other processes keep taking it; retry`,
  );
}

async function removeStale(dir: string, shown: string, stale: Holder): Promise<void> {
  const takeover = path.join(dir, TAKEOVER_FILE);
  if (!createWithPid(takeover)) {
    const other = readHolder(takeover);
    if (other && isGone(other)) {
      throw new EmbeddedLockedError(
        `The embedded database at ${shown} has a leftover ${TAKEOVER_FILE} from a process that died (pid ${other.pid ?? 'unknown'}); make sure no process uses the folder, delete that file and retry`,
      );
    }
    await sleep(LOCK_RETRY_MS); // another process is taking over right now
    return;
  }
  try {
    const now = readHolder(path.join(dir, LOCK_FILE));
    if (now && now.pid === stale.pid && isGone(now)) fs.rmSync(path.join(dir, LOCK_FILE), { force: true });
  } finally {
    fs.rmSync(takeover, { force: true });
  }
}

function ownedLock(file: string): FolderLock {
  let held = true;
  const release = (): void => {
    if (!held) return;
    held = false;
    process.off('exit', release);
    // Only our own lock: never remove one that a bug or an operator handed to someone else.
    // Best effort: a lock left behind names a dead pid, and the next start takes it over.
    try {
      if (readHolder(file)?.pid === process.pid) fs.rmSync(file, { force: true });
    } catch {
      // the folder may be gone
    }
  };
  // A process that exits without stop() leaves no lock behind (signals skip 'exit'; then the
  // next start finds the pid dead and takes the lock over).
  process.on('exit', release);
  return { release };
}

/** Creates `file` exclusively with our pid in it; false if it already exists. */
function createWithPid(file: string): boolean {
  let fd: number;
  try {
    fd = fs.openSync(file, 'wx');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  }
  try {
    fs.writeSync(fd, `${process.pid}\n`);
  } finally {
    fs.closeSync(fd);
  }
  return true;
}

/** The lock's owner, or undefined if the file does not exist. */
function readHolder(file: string): Holder | undefined {
  try {
    const ageMs = Date.now() - fs.statSync(file).mtimeMs;
    const text = fs.readFileSync(file, 'utf8').trim();
    const pid = /^\d+$/.test(text) ? Number(text) : undefined;
    return { pid: pid !== undefined && pid > 0 ? pid : undefined, ageMs };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

function isGone(holder: Holder): boolean {
  return holder.pid === undefined ? holder.ageMs >= EMPTY_LOCK_GRACE_MS : !isAlive(holder.pid);
}

function isAlive(pid: number): boolean {
  // Our own pid in a lock we do not hold (see openHere) was left by an earlier process.
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0); // signal 0: existence check only
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'; // alive, owned by another user
  }
}
