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

/** The toolkit's whole configuration, validated. The library takes this; only the CLI reads the environment. */
export interface ToolkitConfig {
  readonly connection: ConnectionTarget;
  readonly masterMigrationsDir: string;
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

/** Defaults, shared by the validator and `.env.example`. */
export const DEFAULTS = {
  masterMigrationsDir: 'master-migrations',
  tenantMigrationsDir: 'tenant-migrations',
  pgliteDataDir: '.pglite',
  tenantExtensions: 'vector',
  poolMax: 10,
  lockTimeout: '10s',
  ledgerKeepRuns: 200,
  ledgerKeepDays: 90,
  tenantAppRole: 'tenant_app',
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
  if (problems.length > 0) throw new ConfigError(problems);
  return {
    connection: connection!,
    masterMigrationsDir: path.resolve(cwd, nonEmpty(env.MASTER_MIGRATIONS_DIR) ?? DEFAULTS.masterMigrationsDir),
    tenantMigrationsDir: path.resolve(cwd, nonEmpty(env.TENANT_MIGRATIONS_DIR) ?? DEFAULTS.tenantMigrationsDir),
    tenantExtensions,
    poolMax: connection!.kind === 'embedded' ? 1 : poolMax,
    lockTimeoutMs,
    ledgerRetention: { runs: keepRuns, days: keepDays },
    escapeGuard,
    tenantRoles,
    tenantAppRole,
    citus,
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
  const ssl = parseSsl(env, cwd, problems);
  if (url !== undefined) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      problems.push('DATABASE_URL is not a valid URL (expected postgres://user:password@host:5432/database)');
      return undefined;
    }
    if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
      problems.push(`DATABASE_URL must start with postgres:// or postgresql://, not ${parsed.protocol}//`);
      return undefined;
    }
    const port = parsed.port === '' ? 5432 : Number(parsed.port);
    const host = decodeURIComponent(parsed.hostname) || 'localhost';
    return {
      kind: 'server',
      host,
      port,
      user: parsed.username === '' ? undefined : decodeURIComponent(parsed.username),
      password: parsed.password === '' ? undefined : decodeURIComponent(parsed.password),
      database: parsed.pathname.length > 1 ? decodeURIComponent(parsed.pathname.slice(1)) : undefined,
      describe: `${host}:${port}`,
      connectionString: url,
      ssl: ssl ?? false,
    };
  }
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
    ssl: ssl ?? false,
  };
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
  const raw = nonEmpty(env[name]);
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
