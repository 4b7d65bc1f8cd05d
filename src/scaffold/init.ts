import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { UsageError } from '../errors.ts';
import { TOOLKIT_ROOT } from '../version.ts';

/**
 * The toolkit's own master migrations, which a project needs in its master folder: the tenant
 * registry, the run ledger, labels, and the tracking trigger. `init` copies the missing ones, so
 * running it again after an upgrade adds what a new version brings.
 */
export const TOOLKIT_MASTER_MIGRATIONS = [
  '20261121000001_create_tenants',
  '20261202000001_run_ledger',
  '20261202000002_tenant_labels',
  '20261202000003_tracking_trigger',
  '20261202000010_ledger_tenants_run',
  '20261202000011_tenant_lifecycle_statuses',
  '20261203000001_tenant_servers',
] as const;

/** The package scripts `init` adds, each a call of the binary. */
export const INIT_SCRIPTS = [
  'migrate:master',
  'provision:tenant',
  'migrate:tenants',
  'rollback:tenants',
  'migrate:status',
] as const;

/** The files `init` writes: TypeScript (`.ts`) or JavaScript (`.mjs`). */
export type InitLanguage = 'ts' | 'js';

/** Where and how `init` scaffolds a project. */
export interface InitOptions {
  readonly cwd: string;
  /** Overwrite files that exist (never the project's package.json as a whole: only the scripts). */
  readonly force?: boolean;
  /** TypeScript (`.ts`) or JavaScript (`.mjs`) files; default: TypeScript when the project uses it. */
  readonly language?: InitLanguage;
  readonly masterMigrationsDir?: string;
  readonly tenantMigrationsDir?: string;
  /** For the example migration's timestamp. */
  readonly now?: Date;
}

/** What `init` does (or, in a dry run, would do) to one path. */
export interface InitStep {
  /** Relative to the project folder. */
  readonly path: string;
  readonly action: 'create' | 'overwrite' | 'keep' | 'update';
  readonly detail?: string;
}

/** What `init` wrote (or, with `dryRun`, would write), path by path. */
export interface InitReport {
  readonly cwd: string;
  readonly language: InitLanguage;
  readonly dryRun: boolean;
  readonly steps: readonly InitStep[];
}

interface PlannedFile extends InitStep {
  readonly content: string;
}

/**
 * Scaffolds a project for the toolkit: the two migration folders with the toolkit's master
 * migrations and one example tenant migration, `.env.example`, and the package scripts. Never
 * overwrites an existing file unless `force`; with `dryRun` writes nothing and reports the plan.
 */
export function initProject(options: InitOptions & { readonly dryRun?: boolean }): InitReport {
  const cwd = path.resolve(options.cwd);
  const language = options.language ?? detectLanguage(cwd);
  const planned = plan(cwd, language, options);
  if (!options.dryRun) {
    for (const file of planned) {
      if (file.action === 'keep') continue;
      const target = path.join(cwd, file.path);
      mkdirSync(path.dirname(target), { recursive: true });
      writeFileSync(target, file.content);
    }
  }
  return {
    cwd,
    language,
    dryRun: options.dryRun ?? false,
    steps: planned.map(({ content: _content, ...step }) => step),
  };
}

function plan(cwd: string, language: InitLanguage, options: InitOptions): PlannedFile[] {
  const masterDir = options.masterMigrationsDir ?? 'master-migrations';
  const tenantDir = options.tenantMigrationsDir ?? 'tenant-migrations';
  const extension = language === 'ts' ? 'ts' : 'mjs';
  const files: { path: string; content: string }[] = [];
  for (const name of TOOLKIT_MASTER_MIGRATIONS) {
    files.push({
      path: path.join(masterDir, `${name}.${extension}`),
      content: readToolkitFile(
        language === 'ts' ? `master-migrations/${name}.ts` : `dist/templates/master-migrations/${name}.mjs`,
      ),
    });
  }
  // An example tenant migration, unless the tenant folder already has migrations of its own.
  const tenantFolder = path.join(cwd, tenantDir);
  if (!hasMigrations(tenantFolder)) {
    files.push({
      path: path.join(tenantDir, `${timestamp(options.now ?? new Date())}_create_notes.${extension}`),
      content: language === 'ts' ? EXAMPLE_TS : EXAMPLE_JS,
    });
  }
  files.push({ path: '.env.example', content: readToolkitFile('.env.example') });
  const planned: PlannedFile[] = files.map((file) => {
    const exists = existsSync(path.join(cwd, file.path)) || sameMigrationExists(cwd, file.path);
    if (!exists) return { ...file, action: 'create' };
    return options.force ? { ...file, action: 'overwrite' } : { ...file, action: 'keep', detail: 'exists' };
  });
  const scripts = scriptsStep(cwd, options.force ?? false);
  if (scripts) planned.push(scripts);
  return planned;
}

/** A master migration counts as present whatever its extension (a project may keep `.js` ones). */
function sameMigrationExists(cwd: string, file: string): boolean {
  const dir = path.join(cwd, path.dirname(file));
  const stem = path.basename(file).replace(/\.[^.]+$/, '');
  if (!existsSync(dir) || !TOOLKIT_MASTER_MIGRATIONS.some((name) => name === stem)) return false;
  return ['.ts', '.mts', '.cts', '.js', '.mjs', '.cjs'].some((ext) => existsSync(path.join(dir, stem + ext)));
}

function scriptsStep(cwd: string, force: boolean): PlannedFile | undefined {
  const file = path.join(cwd, 'package.json');
  if (!existsSync(file)) return undefined;
  const text = readFileSync(file, 'utf8');
  let pkg: { scripts?: Record<string, string> };
  try {
    pkg = JSON.parse(text);
  } catch (error) {
    throw new UsageError(`package.json is not valid JSON (${(error as Error).message}): fix it, then run init again`);
  }
  const scripts = { ...(pkg.scripts ?? {}) };
  const added: string[] = [];
  const kept: string[] = [];
  for (const name of INIT_SCRIPTS) {
    const command = `tenant-migrate ${name}`;
    if (scripts[name] === command) continue;
    if (scripts[name] !== undefined && !force) kept.push(name);
    else {
      scripts[name] = command;
      added.push(name);
    }
  }
  if (added.length === 0) {
    return {
      path: 'package.json',
      action: 'keep',
      detail: kept.length > 0 ? `scripts ${kept.join(', ')} exist with other commands` : 'scripts present',
      content: text,
    };
  }
  // Only `scripts` changes: every other key keeps its place and value, and the file its indentation.
  const indent = /\n([ \t]+)"/.exec(text)?.[1] ?? '  ';
  const content = `${JSON.stringify({ ...pkg, scripts }, null, indent)}${text.endsWith('\n') ? '\n' : ''}`;
  const detail = `add scripts ${added.join(', ')}${kept.length > 0 ? ` (kept ${kept.join(', ')})` : ''}`;
  return { path: 'package.json', action: 'update', detail, content };
}

/** TypeScript when the project has a tsconfig.json or depends on typescript; JavaScript otherwise. */
export function detectLanguage(cwd: string): InitLanguage {
  if (existsSync(path.join(cwd, 'tsconfig.json'))) return 'ts';
  try {
    const pkg = JSON.parse(readFileSync(path.join(cwd, 'package.json'), 'utf8')) as Record<string, unknown>;
    const deps = { ...(pkg.dependencies as object), ...(pkg.devDependencies as object) };
    return 'typescript' in deps ? 'ts' : 'js';
  } catch {
    return 'js';
  }
}

function hasMigrations(dir: string): boolean {
  return existsSync(dir) && readdirSync(dir).some((name) => /\.(?:[cm]?[jt]s|sql)$/.test(name));
}

function readToolkitFile(relative: string): string {
  const file = TOOLKIT_ROOT === undefined ? undefined : path.join(TOOLKIT_ROOT, relative);
  if (file === undefined || !existsSync(file)) {
    throw new UsageError(
      `The toolkit's ${relative} is missing from its package${TOOLKIT_ROOT ? ` (${TOOLKIT_ROOT})` : ''}: ` +
        'reinstall tenant-migrate (in its own repository: pnpm build)',
    );
  }
  return readFileSync(file, 'utf8');
}

/** Knex's file-name timestamp: YYYYMMDDHHMMSS in UTC. */
function timestamp(now: Date): string {
  return now.toISOString().replace(/[-:T]/g, '').slice(0, 14);
}

const EXAMPLE_TS = `import type { Knex } from 'knex';

/**
 * An example tenant migration: it runs once in every tenant schema, with that schema first on
 * the search path, so the unqualified \`notes\` is created in the tenant's schema.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('notes', (table) => {
    table.bigIncrements('id').primary();
    table.text('body').notNullable();
    table.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('notes');
}
`;

const EXAMPLE_JS = `/**
 * An example tenant migration: it runs once in every tenant schema, with that schema first on
 * the search path, so the unqualified \`notes\` is created in the tenant's schema.
 * @param {import('knex').Knex} knex
 */
export async function up(knex) {
  await knex.schema.createTable('notes', (table) => {
    table.bigIncrements('id').primary();
    table.text('body').notNullable();
    table.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
  });
}

/** @param {import('knex').Knex} knex */
export async function down(knex) {
  await knex.schema.dropTable('notes');
}
`;
