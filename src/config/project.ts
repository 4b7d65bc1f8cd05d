import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ConfigError } from '../errors.ts';
import { type Env, loadConfig, type ToolkitConfig } from './config.ts';
import { CONFIG_KEYS } from './define.ts';
import { dotenvVariables } from './env.ts';
import { ensureTypeScriptFor } from './typescript-loader.ts';

export { CONFIG_KEYS, type ProjectConfig } from './define.ts';

/** Config file names looked for in the working folder, in this order. */
export const CONFIG_FILES = [
  'tenant-migrate.config.ts',
  'tenant-migrate.config.mts',
  'tenant-migrate.config.js',
  'tenant-migrate.config.mjs',
  'tenant-migrate.config.cjs',
  'tenant-migrate.config.json',
] as const;
const KNEXFILES = ['knexfile.ts', 'knexfile.mts', 'knexfile.js', 'knexfile.mjs', 'knexfile.cjs'] as const;

/**
 * The configuration of the project in `cwd`, from lowest to highest precedence: the defaults,
 * the config file (`configFile`, else the first of CONFIG_FILES present, else a `tenantMigrate`
 * key exported by the knexfile), `.env`, then the environment. Problems of every layer are
 * reported together in one ConfigError.
 */
export async function configFromProject(
  cwd: string = process.cwd(),
  env: Env = process.env,
  configFile: string | undefined = env.TENANT_MIGRATE_CONFIG,
): Promise<ToolkitConfig> {
  const fromConfig = await readProjectConfig(cwd, configFile);
  return loadConfig({ ...fromConfig, ...dotenvVariables(cwd), ...env }, cwd);
}

/** The config file's settings as environment variables (empty when the project has none). */
export async function readProjectConfig(cwd: string, configFile?: string): Promise<Record<string, string>> {
  if (configFile !== undefined && configFile !== '') {
    const file = path.resolve(cwd, configFile);
    if (!existsSync(file)) throw new ConfigError([`config file ${file} does not exist`]);
    return asVariables(await readConfigFile(file), path.basename(file));
  }
  const found = CONFIG_FILES.map((name) => path.join(cwd, name)).find((file) => existsSync(file));
  if (found) return asVariables(await readConfigFile(found), path.basename(found));
  const knexfile = KNEXFILES.map((name) => path.join(cwd, name)).find((file) => existsSync(file));
  // Only a knexfile that mentions the key is loaded: loading one may connect or read secrets.
  if (knexfile && readFileSync(knexfile, 'utf8').includes('tenantMigrate')) {
    const settings = knexfileSettings(await importFile(knexfile));
    if (settings !== undefined) return asVariables(settings, `${path.basename(knexfile)} (tenantMigrate)`);
  }
  return {};
}

async function readConfigFile(file: string): Promise<unknown> {
  if (file.endsWith('.json')) {
    try {
      return JSON.parse(readFileSync(file, 'utf8'));
    } catch (error) {
      throw new ConfigError([`${path.basename(file)} is not valid JSON: ${(error as Error).message}`]);
    }
  }
  return defaultExport(await importFile(file));
}

/** A module's namespace (a CommonJS `module.exports` arrives as its `default`). */
async function importFile(file: string): Promise<Record<string, unknown>> {
  await ensureTypeScriptFor(file);
  try {
    return (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (error) {
    const reason = (error as Error).message?.split('\n')[0] ?? String(error);
    throw new ConfigError([`cannot load ${path.basename(file)}: ${reason}`]);
  }
}

/**
 * A config module's settings: its default export, unwrapped once more when TypeScript compiled
 * to CommonJS nests it (`{ default: { default: … } }`); a function is called.
 */
async function defaultExport(mod: Record<string, unknown>): Promise<unknown> {
  let value: unknown = 'default' in mod ? mod.default : mod;
  if (isRecord(value) && 'default' in value && Object.keys(value).every((k) => k === 'default' || k === '__esModule'))
    value = value.default;
  return typeof value === 'function' ? await (value as () => unknown)() : value;
}

/** `tenantMigrate` exported by name, or as a key of the default export (a CommonJS knexfile). */
function knexfileSettings(mod: Record<string, unknown>): unknown {
  if (mod.tenantMigrate !== undefined) return mod.tenantMigrate;
  const fallback = mod.default;
  if (!isRecord(fallback)) return undefined;
  if (fallback.tenantMigrate !== undefined) return fallback.tenantMigrate;
  return isRecord(fallback.default) ? fallback.default.tenantMigrate : undefined;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function asVariables(value: unknown, where: string): Record<string, string> {
  if (!isRecord(value)) throw new ConfigError([`${where} must export an object of settings`]);
  const problems: string[] = [];
  const variables: Record<string, string> = {};
  for (const [key, raw] of Object.entries(value)) {
    const variable = CONFIG_KEYS[key as keyof typeof CONFIG_KEYS];
    if (variable === undefined) {
      problems.push(`${where}: unknown setting "${key}" (known: ${Object.keys(CONFIG_KEYS).join(', ')})`);
      continue;
    }
    if (raw === undefined || raw === null) continue;
    if (key === 'tenantServers' && isRecord(raw)) {
      const list = serverList(raw, `${where}: "${key}"`, problems);
      if (list !== undefined) variables[variable] = list;
    } else if (Array.isArray(raw) && raw.every((item) => typeof item === 'string')) variables[variable] = raw.join(',');
    else if (typeof raw === 'boolean') variables[variable] = raw ? 'on' : 'off';
    else if (typeof raw === 'string' || typeof raw === 'number') variables[variable] = String(raw);
    else problems.push(`${where}: "${key}" must be a string, a number, a boolean or a list of strings`);
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return variables;
}

/**
 * `{ eu1: url1, eu2: url2 }` as TENANT_SERVERS's `eu1=url1,eu2=url2` (loadConfig then checks
 * names and URLs). A comma inside a URL would split the list, so it is written `%2C`, which the
 * URL decodes back to a comma; a name with `,` or `=` could not be read back, and is refused.
 */
function serverList(servers: Record<string, unknown>, where: string, problems: string[]): string | undefined {
  const entries: string[] = [];
  for (const [name, url] of Object.entries(servers)) {
    if (/[,=]/.test(name)) problems.push(`${where}: "${name}" is not a server name`);
    else if (typeof url !== 'string') problems.push(`${where}: "${name}" must be a URL (a string)`);
    else entries.push(`${name}=${url.replaceAll(',', '%2C')}`);
  }
  return entries.length === Object.keys(servers).length ? entries.join(',') : undefined;
}
