import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { ConfigError } from '../errors.ts';

/** How to reach PostgreSQL: a real server, or the embedded PGlite default. */
export type ConnectionTarget =
  | {
      readonly kind: 'server';
      readonly host: string;
      readonly port: number;
      readonly user: string | undefined;
      readonly password: string | undefined;
      readonly database: string | undefined;
      /** `host:port`, for messages. */
      readonly describe: string;
      readonly connectionString: string | undefined;
      readonly ssl: false | { readonly ca?: string; readonly rejectUnauthorized: boolean };
    }
  | { readonly kind: 'embedded'; readonly dataDir: string };

/** The name of the server of DATABASE_URL (or DB_*), which also keeps the registry and the master migrations. */
export const MAIN_SERVER = 'main';

/**
 * One more PostgreSQL server that tenant schemas may live on (an entry of `TENANT_SERVERS`).
 * TLS is the main server's (DB_SSL, DB_SSL_CERT_PATH…), or `sslmode` in its own URL.
 */
export interface TenantServerConfig {
  /** `[a-z][a-z0-9_-]{0,31}`, unique, never `main`. */
  readonly name: string;
  /** Its `connectionString` no longer carries the toolkit's own parameters (`pool_max`, `weight`). */
  readonly target: ConnectionTarget & { kind: 'server' };
  /** Connections in this server's pool (`pool_max=` in its URL, default DB_POOL_MAX). */
  readonly poolMax: number;
  /** Its share of new tenants (`weight=` in its URL, default 1; 0 receives none). */
  readonly weight: number;
}

/** The toolkit's whole configuration, validated. The library takes this; only the CLI reads the environment. */
export interface ToolkitConfig {
  readonly connection: ConnectionTarget;
  readonly masterMigrationsDir: string;
  /**
   * Migrations of `public` that every server tenants live on needs (extensions, shared types and
   * tables tenants reference): applied by `migrate:master` to the main server and to each of
   * TENANT_SERVERS, tracked per server in `public.knex_migrations_shared`. Optional folder.
   */
  readonly sharedMigrationsDir: string;
  readonly tenantMigrationsDir: string;
  /** Extensions every tenant needs in `public` (default `vector`). */
  readonly tenantExtensions: readonly string[];
  /** Connections in the shared pool (always 1 on the embedded engine). */
  readonly poolMax: number;
  /** `lock_timeout` for migration transactions, in milliseconds (0 = wait forever). */
  readonly lockTimeoutMs: number;
  /** How long the run ledger keeps per-tenant rows: those of the last `runs` runs and of the last `days` days. */
  readonly ledgerRetention: { readonly runs: number; readonly days: number };
  /** Check that each tenant batch changed only its own schema (default on; `ESCAPE_GUARD=off`). */
  readonly escapeGuard: boolean;
  /**
   * One `NOLOGIN` role per tenant (`<schema>_app`) holding the privileges on that schema only;
   * the runtime switches to it for each transaction (`TENANT_ROLES=on`, default off).
   */
  readonly tenantRoles: boolean;
  /**
   * The role the application logs in as (`TENANT_APP_ROLE`, default `tenant_app`, as in the
   * README's *Privileges*): with `tenantRoles`, it is granted membership in each tenant's role.
   */
  readonly tenantAppRole: string;
  /**
   * Citus schema-based sharding (`CITUS`): `on` distributes every tenant schema (the database
   * must be a Citus coordinator), `off` never, `auto` (default) when the `citus` extension is
   * installed, probed once per toolkit. See docs/citus.md.
   */
  readonly citus: CitusMode;
  /**
   * The other servers tenants may be placed on (`TENANT_SERVERS`), in the order given; empty
   * (the default) keeps every tenant on the main server.
   */
  readonly servers: readonly TenantServerConfig[];
  /** The main server's share of new tenants (`MAIN_SERVER_WEIGHT`, default 1; 0 receives none). */
  readonly mainServerWeight: number;
}

/** `CITUS=on|off|auto`: whether tenant schemas are Citus distributed schemas. */
export type CitusMode = 'on' | 'off' | 'auto';

/** Environment variables as the toolkit reads them (`process.env`, or `.env` merged under it). */
export type Env = Readonly<Record<string, string | undefined>>;

const TRUE = new Set(['1', 'true', 'yes', 'on', 'require']);
const FALSE = new Set(['0', 'false', 'no', 'off', 'disable', '']);
const EXTENSION_NAME = /^[a-z_][a-z0-9_-]*$/;
/** A role name that needs no quoting surprises: letters, digits, `_` and `$`, at most 63 bytes. */
const ROLE_NAME = /^[A-Za-z_][A-Za-z0-9_$]{0,62}$/;
const SERVER_NAME = /^[a-z][a-z0-9_-]{0,31}$/;
/** Weights are whole numbers; the bound only catches a typo (a weight of a million is a ratio nobody means). */
const MAX_WEIGHT = 1_000_000;

/** Defaults, shared by the validator and `.env.example`. */
export const DEFAULTS = {
  masterMigrationsDir: 'master-migrations',
  sharedMigrationsDir: 'shared-migrations',
  tenantMigrationsDir: 'tenant-migrations',
  pgliteDataDir: '.pglite',
  tenantExtensions: 'vector',
  poolMax: 10,
  lockTimeout: '10s',
  ledgerKeepRuns: 200,
  ledgerKeepDays: 90,
  tenantAppRole: 'tenant_app',
  serverWeight: 1,
} as const;

/**
 * Builds the configuration from environment variables (already merged with `.env` by the caller).
 * Every problem is collected and reported in one ConfigError (exit code 2), each naming its variable.
 */
export function loadConfig(env: Env, cwd: string = process.cwd()): ToolkitConfig {
  const problems: string[] = [];
  const connection = parseConnection(env, cwd, problems);
  const poolMax = parseInteger(env, 'DB_POOL_MAX', DEFAULTS.poolMax, 1, 1000, problems);
  const lockTimeoutMs = parseDurationVar(env, 'LOCK_TIMEOUT', DEFAULTS.lockTimeout, problems);
  const keepRuns = parseInteger(env, 'LEDGER_KEEP_RUNS', DEFAULTS.ledgerKeepRuns, 1, 1_000_000, problems);
  const keepDays = parseInteger(env, 'LEDGER_KEEP_DAYS', DEFAULTS.ledgerKeepDays, 1, 100_000, problems);
  const tenantExtensions = parseExtensions(env.TENANT_EXTENSIONS ?? DEFAULTS.tenantExtensions, problems);
  const escapeGuard = parseBoolean(env, 'ESCAPE_GUARD', true, problems);
  const tenantRoles = parseBoolean(env, 'TENANT_ROLES', false, problems);
  const tenantAppRole = parseRoleName(env, 'TENANT_APP_ROLE', DEFAULTS.tenantAppRole, problems);
  const citus = parseCitus(env, connection, problems);
  const servers = parseTenantServers(env, connection, poolMax, problems);
  const mainServerWeight = parseInteger(env, 'MAIN_SERVER_WEIGHT', DEFAULTS.serverWeight, 0, MAX_WEIGHT, problems);
  if (mainServerWeight === 0 && servers.every((s) => s.weight === 0)) {
    problems.push(
      servers.length === 0
        ? 'MAIN_SERVER_WEIGHT=0 leaves no server for new tenants: add TENANT_SERVERS or give the main server a weight'
        : 'MAIN_SERVER_WEIGHT and every weight= of TENANT_SERVERS are 0: no server would receive new tenants',
    );
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return {
    connection: connection!,
    masterMigrationsDir: path.resolve(cwd, nonEmpty(env.MASTER_MIGRATIONS_DIR) ?? DEFAULTS.masterMigrationsDir),
    sharedMigrationsDir: path.resolve(cwd, nonEmpty(env.SHARED_MIGRATIONS_DIR) ?? DEFAULTS.sharedMigrationsDir),
    tenantMigrationsDir: path.resolve(cwd, nonEmpty(env.TENANT_MIGRATIONS_DIR) ?? DEFAULTS.tenantMigrationsDir),
    tenantExtensions,
    poolMax: connection!.kind === 'embedded' ? 1 : poolMax,
    lockTimeoutMs,
    ledgerRetention: { runs: keepRuns, days: keepDays },
    escapeGuard,
    tenantRoles,
    tenantAppRole,
    citus,
    servers,
    mainServerWeight,
  };
}

function parseCitus(env: Env, connection: ConnectionTarget | undefined, problems: string[]): CitusMode {
  const raw = nonEmpty(env.CITUS)?.toLowerCase();
  if (raw === undefined || raw === 'auto') return connection?.kind === 'embedded' ? 'off' : 'auto';
  const mode = ['on', 'true', 'yes', '1'].includes(raw)
    ? 'on'
    : ['off', 'false', 'no', '0'].includes(raw)
      ? 'off'
      : undefined;
  if (mode === undefined) {
    problems.push(`CITUS must be on, off or auto, got "${env.CITUS}"`);
    return 'off';
  }
  if (mode === 'on' && connection?.kind === 'embedded') {
    problems.push('CITUS=on needs a Citus coordinator: set DATABASE_URL (the embedded engine has no Citus)');
  }
  return mode;
}

function parseConnection(env: Env, cwd: string, problems: string[]): ConnectionTarget | undefined {
  const url = nonEmpty(env.DATABASE_URL);
  const anyDbVar = ['DB_HOST', 'DB_PORT', 'DB_USER', 'DB_PASSWORD', 'DB_NAME'].some(
    (k) => nonEmpty(env[k]) !== undefined,
  );
  if (url === undefined && !anyDbVar) {
    return { kind: 'embedded', dataDir: path.resolve(cwd, nonEmpty(env.PGLITE_DATA_DIR) ?? DEFAULTS.pgliteDataDir) };
  }
  const ssl = parseSsl(env, cwd, problems) ?? false;
  if (url !== undefined) return parseServerUrl('DATABASE_URL', url, ssl, problems)?.target;
  const host = nonEmpty(env.DB_HOST) ?? 'localhost';
  const port = parseInteger(env, 'DB_PORT', 5432, 1, 65535, problems);
  return {
    kind: 'server',
    host,
    port,
    user: nonEmpty(env.DB_USER) ?? 'postgres',
    password: env.DB_PASSWORD === undefined || env.DB_PASSWORD === '' ? undefined : env.DB_PASSWORD,
    database: nonEmpty(env.DB_NAME) ?? 'postgres',
    describe: `${host}:${port}`,
    connectionString: undefined,
    ssl,
  };
}

/**
 * A server URL as a target (DATABASE_URL, or one entry of TENANT_SERVERS). `own` names query
 * parameters that are the toolkit's, not the driver's: they are returned and removed from the
 * connection string. A problem names `label` and never shows the URL (it may hold a password).
 */
function parseServerUrl(
  label: string,
  url: string,
  ssl: ToolkitConfigSsl | false,
  problems: string[],
  own: readonly string[] = [],
): { target: ConnectionTarget & { kind: 'server' }; params: ReadonlyMap<string, string> } | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    problems.push(`${label} is not a valid URL (expected postgres://user:password@host:5432/database)`);
    return undefined;
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
    problems.push(`${label} must start with postgres:// or postgresql://, not ${parsed.protocol}//`);
    return undefined;
  }
  // `postgres:user:pw@host` parses too, as a path without a host: never what was meant.
  if (!/^[a-z]+:\/\//i.test(url)) {
    problems.push(`${label} is not a valid URL (expected postgres://user:password@host:5432/database)`);
    return undefined;
  }
  const params = new Map<string, string>();
  for (const key of own) {
    const values = parsed.searchParams.getAll(key);
    if (values.length > 1) problems.push(`${label}: ${key} is given ${values.length} times`);
    if (values.length > 0) params.set(key, values[0]!);
    parsed.searchParams.delete(key);
  }
  const port = parsed.port === '' ? 5432 : Number(parsed.port);
  const host = decodeURIComponent(parsed.hostname) || 'localhost';
  const target = {
    kind: 'server',
    host,
    port,
    user: parsed.username === '' ? undefined : decodeURIComponent(parsed.username),
    password: parsed.password === '' ? undefined : decodeURIComponent(parsed.password),
    database: parsed.pathname.length > 1 ? decodeURIComponent(parsed.pathname.slice(1)) : undefined,
    describe: `${host}:${port}`,
    // Untouched unless a parameter of ours was removed: the driver reads the rest (sslmode…).
    connectionString: params.size === 0 ? url : parsed.toString(),
    ssl,
  } as const;
  return { target, params };
}

/**
 * `TENANT_SERVERS=eu1=postgres://…?pool_max=5&weight=2,eu2=postgres://…`: entries separated
 * by commas (a comma inside a URL is written `%2C`), each `name=URL`. The URL's TLS is the main
 * server's (DB_SSL, DB_SSL_CERT_PATH, DB_SSL_REJECT_UNAUTHORIZED), else its own `sslmode`.
 */
function parseTenantServers(
  env: Env,
  main: ConnectionTarget | undefined,
  defaultPoolMax: number,
  problems: string[],
): TenantServerConfig[] {
  const raw = nonEmpty(env.TENANT_SERVERS);
  if (raw === undefined) return [];
  if (main?.kind === 'embedded') {
    problems.push(
      'TENANT_SERVERS needs the main server as DATABASE_URL (or DB_*): the embedded engine cannot be one of several servers',
    );
    return [];
  }
  const ssl = main?.ssl ?? false;
  const servers: TenantServerConfig[] = [];
  // Two names for one database would count its tenants twice and place them as if on two servers.
  const seen = new Map<string, string>(main === undefined ? [] : [[databaseKey(main), MAIN_SERVER]]);
  const entries = raw
    .split(',')
    .map((entry) => entry.trim())
    .filter((entry) => entry !== '');
  for (const [i, entry] of entries.entries()) {
    const named = splitEntry(entry, i + 1, servers, problems);
    if (named === undefined) continue;
    const label = `TENANT_SERVERS (${named.name})`;
    const parsed = parseServerUrl(label, named.url, ssl, problems, ['pool_max', 'weight']);
    if (parsed === undefined) continue;
    const poolMax = wholeNumber(parsed.params.get('pool_max'), `${label}: pool_max`, defaultPoolMax, 1, 1000, problems);
    const weight = wholeNumber(
      parsed.params.get('weight'),
      `${label}: weight`,
      DEFAULTS.serverWeight,
      0,
      MAX_WEIGHT,
      problems,
    );
    const key = databaseKey(parsed.target);
    const twin = seen.get(key);
    if (twin !== undefined) {
      problems.push(`${label} is the same database as "${twin}" (${key})`);
      continue;
    }
    seen.set(key, named.name);
    servers.push({ name: named.name, target: parsed.target, poolMax, weight });
  }
  return servers;
}

/** One `name=URL` entry of TENANT_SERVERS, its name checked against the rules and the names before it. */
function splitEntry(
  entry: string,
  position: number,
  before: readonly TenantServerConfig[],
  problems: string[],
): { name: string; url: string } | undefined {
  const at = entry.indexOf('=');
  const name = at < 0 ? '' : entry.slice(0, at).trim();
  const url = at < 0 ? '' : entry.slice(at + 1).trim();
  // A URL without a name splits at a `=` of its own (`postgres://u:pa=ss@…`): never echo such a piece.
  if (at < 0 || url === '' || /[:/@]/.test(name)) {
    problems.push(`TENANT_SERVERS: entry ${position} must be name=postgres://…${describeEntry(entry)}`);
    return undefined;
  }
  if (!SERVER_NAME.test(name)) {
    const shown = /^[\w.-]*$/.test(name) ? `"${name}"` : `entry ${position}`;
    problems.push(
      `TENANT_SERVERS: ${shown} is not a server name (a lowercase letter, then up to 31 of a-z, 0-9, _ and -)`,
    );
    return undefined;
  }
  if (name === MAIN_SERVER) {
    problems.push(`TENANT_SERVERS: "${MAIN_SERVER}" is reserved for the server of DATABASE_URL (or DB_*)`);
    return undefined;
  }
  if (before.some((server) => server.name === name)) {
    problems.push(`TENANT_SERVERS: "${name}" is named twice`);
    return undefined;
  }
  return { name, url };
}

/** `host:port/database` (no user, no password), for messages. */
export function describeServer(target: ConnectionTarget & { kind: 'server' }): string {
  return target.database === undefined ? target.describe : `${target.describe}/${target.database}`;
}

function databaseKey(target: ConnectionTarget): string {
  if (target.kind === 'embedded') return target.dataDir;
  const at = `${target.host.toLowerCase()}:${target.port}`;
  return target.database === undefined ? at : `${at}/${target.database}`;
}

/** An entry shown with its password replaced by `***`, or nothing when it is not a URL one can redact safely. */
function describeEntry(entry: string): string {
  const redacted = redactUrl(entry);
  return redacted === undefined ? '' : `, got "${redacted}"`;
}

/**
 * `url` with its password replaced by `***` (`postgres://user:***@host/db`), or undefined when
 * it is not a URL with a host: then no part of it can safely be shown (`u:secret@host` parses
 * as the scheme `u:` with a path that holds the password).
 */
export function redactUrl(url: string): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return undefined;
  }
  if (parsed.host === '') return undefined;
  if (parsed.password !== '') parsed.password = '***';
  return parsed.toString();
}

function parseSsl(env: Env, cwd: string, problems: string[]): ToolkitConfigSsl | undefined {
  const enabled = parseBoolean(env, 'DB_SSL', false, problems);
  const certPath = nonEmpty(env.DB_SSL_CERT_PATH);
  const rejectUnauthorized = parseBoolean(env, 'DB_SSL_REJECT_UNAUTHORIZED', true, problems);
  if (!enabled && certPath === undefined) return undefined;
  let ca: string | undefined;
  if (certPath !== undefined) {
    const resolved = path.resolve(cwd, certPath);
    if (!existsSync(resolved)) problems.push(`DB_SSL_CERT_PATH: no certificate file at ${resolved}`);
    else {
      try {
        ca = readFileSync(resolved, 'utf8');
      } catch (error) {
        problems.push(
          `DB_SSL_CERT_PATH: cannot read ${resolved} (${(error as NodeJS.ErrnoException).code ?? 'error'})`,
        );
      }
    }
  }
  return ca === undefined ? { rejectUnauthorized } : { ca, rejectUnauthorized };
}

type ToolkitConfigSsl = { readonly ca?: string; readonly rejectUnauthorized: boolean };

function parseBoolean(env: Env, name: string, fallback: boolean, problems: string[]): boolean {
  const raw = env[name];
  if (raw === undefined) return fallback;
  const value = raw.trim().toLowerCase();
  if (TRUE.has(value)) return true;
  if (FALSE.has(value)) return value === '' ? fallback : false;
  problems.push(`${name} must be true or false, got "${raw}"`);
  return fallback;
}

function parseInteger(env: Env, name: string, fallback: number, min: number, max: number, problems: string[]): number {
  return wholeNumber(env[name], name, fallback, min, max, problems);
}

/** `text` as a whole number within [min, max]; `fallback` when it is unset or wrong (a problem naming `name`). */
function wholeNumber(
  text: string | undefined,
  name: string,
  fallback: number,
  min: number,
  max: number,
  problems: string[],
): number {
  const raw = nonEmpty(text);
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isInteger(value) || value < min || value > max) {
    problems.push(`${name} must be a whole number between ${min} and ${max}, got "${raw}"`);
    return fallback;
  }
  return value;
}

function parseDurationVar(env: Env, name: string, fallback: string, problems: string[]): number {
  const raw = nonEmpty(env[name]) ?? fallback;
  const ms = parseDuration(raw);
  if (ms === undefined) {
    problems.push(`${name} must be a duration such as 500ms, 5s or 2m (0 to wait forever), got "${raw}"`);
    return 0;
  }
  return ms;
}

/** Parses `500ms`, `5s`, `2m`, `1h` or a bare number of milliseconds; undefined when it is not one. */
export function parseDuration(raw: string): number | undefined {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(raw);
  if (!match) return undefined;
  const factor = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(match[2] ?? 'ms') as 'ms' | 's' | 'm' | 'h'];
  return Math.round(Number(match[1]) * factor);
}

function parseRoleName(env: Env, name: string, fallback: string, problems: string[]): string {
  const raw = nonEmpty(env[name]);
  if (raw === undefined) return fallback;
  // Not a reserved name, and not a tenant's own role (tid_…_app): it would be granted to itself.
  if (!ROLE_NAME.test(raw) || /^(public|none|pg_.*)$/i.test(raw) || /^tid_[0-9a-f]+_app$/.test(raw)) {
    problems.push(
      `${name} must be a role name (letters, digits, _ and $; not PUBLIC, pg_… or a tenant's role), got "${raw}"`,
    );
    return fallback;
  }
  return raw;
}

function parseExtensions(raw: string, problems: string[]): string[] {
  const names = raw
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  for (const name of names) {
    if (!EXTENSION_NAME.test(name)) problems.push(`TENANT_EXTENSIONS: "${name}" is not an extension name`);
  }
  return names;
}

function nonEmpty(value: string | undefined): string | undefined {
  const trimmed = value?.trim();
  return trimmed === undefined || trimmed === '' ? undefined : trimmed;
}
