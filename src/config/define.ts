// The package's `tenant-migrate/config` entry: what a project's config file imports. It loads
// nothing else, so a config file costs no more than its own code.

/**
 * What a project's config file may set: each key stands for the environment variable next to
 * it, and the environment (then `.env`) wins over the file.
 */
export const CONFIG_KEYS = {
  databaseUrl: 'DATABASE_URL',
  dbHost: 'DB_HOST',
  dbPort: 'DB_PORT',
  dbUser: 'DB_USER',
  dbPassword: 'DB_PASSWORD',
  dbName: 'DB_NAME',
  dbSsl: 'DB_SSL',
  dbSslCertPath: 'DB_SSL_CERT_PATH',
  dbSslRejectUnauthorized: 'DB_SSL_REJECT_UNAUTHORIZED',
  pgliteDataDir: 'PGLITE_DATA_DIR',
  masterMigrationsDir: 'MASTER_MIGRATIONS_DIR',
  sharedMigrationsDir: 'SHARED_MIGRATIONS_DIR',
  tenantMigrationsDir: 'TENANT_MIGRATIONS_DIR',
  tenantExtensions: 'TENANT_EXTENSIONS',
  poolMax: 'DB_POOL_MAX',
  lockTimeout: 'LOCK_TIMEOUT',
  ledgerKeepRuns: 'LEDGER_KEEP_RUNS',
  ledgerKeepDays: 'LEDGER_KEEP_DAYS',
  escapeGuard: 'ESCAPE_GUARD',
  tenantRoles: 'TENANT_ROLES',
  citus: 'CITUS',
  tenantServers: 'TENANT_SERVERS',
  mainServerWeight: 'MAIN_SERVER_WEIGHT',
} as const;

/**
 * A project's config file (`tenant-migrate.config.ts` etc.): every key optional.
 * `tenantServers` is TENANT_SERVERS's text, or an object of name to URL
 * (`{ eu1: 'postgres://…?weight=2' }`).
 */
export type ProjectConfig = {
  readonly [K in keyof typeof CONFIG_KEYS]?: K extends 'tenantServers'
    ? string | Readonly<Record<string, string>>
    : string | number | boolean | readonly string[];
};

/**
 * Types a project's config file, e.g. `tenant-migrate.config.ts`:
 *
 * ```ts
 * import { defineConfig } from 'tenant-migrate/config';
 * export default defineConfig({ tenantMigrationsDir: 'db/tenant', lockTimeout: '5s' });
 * ```
 */
export function defineConfig(config: ProjectConfig): ProjectConfig {
  return config;
}
