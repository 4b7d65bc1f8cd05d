import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Knex } from 'knex';
import { MigrationSourceError } from '../errors.ts';
import { evaluateModule, loadErrorReason } from './load-module.ts';
import { SqlFileError } from './sql-file.ts';
import { type SqlMigration, sqlMigration } from './sql-migration.ts';

/** What a migration file exports: Knex's own module shape. */
export interface MigrationModule {
  up(knex: Knex): Promise<unknown> | unknown;
  down?(knex: Knex): Promise<unknown> | unknown;
  config?: { transaction?: boolean; allowOutsideSchema?: boolean };
}

/** A migration file as listed, not yet evaluated. `name` is the file name, as Knex records it. */
export interface MigrationFile {
  readonly name: string;
  readonly file: string;
  /** sha256 of the file with line endings normalised, recorded when it is applied. */
  readonly checksum: string;
}

/** One loaded migration: the file and what it exports. */
export interface Migration extends MigrationFile {
  /** False when the file exports `config = { transaction: false }`, or a `.sql` section says `transaction:false`. */
  readonly transaction: boolean;
  /**
   * True when the file exports `config = { allowOutsideSchema: true }`: it changes objects outside
   * the tenant's schema on purpose, and the escape guard lets its batch through (and says so).
   */
  readonly allowOutsideSchema?: boolean;
  readonly up: (knex: Knex) => Promise<unknown> | unknown;
  readonly down: ((knex: Knex) => Promise<unknown> | unknown) | undefined;
}

/** Where migrations come from. The folder source is the real one; tests may hand in others. */
export interface MigrationSource {
  /** Every migration, sorted by name; throws MigrationSourceError naming the file when one is unusable. */
  load(): Promise<readonly Migration[]>;
  /**
   * The same files without evaluating them (names and checksums only), for readers such as
   * `migrate:status` that need no code: they then load no module and no TypeScript loader.
   */
  list?(): Promise<readonly MigrationFile[]>;
}

/** A source's files without evaluating them where it can list them, else by loading them. */
export function listMigrations(source: MigrationSource): Promise<readonly MigrationFile[]> {
  return source.list ? source.list() : source.load();
}

/** JavaScript and TypeScript modules, in every module system Knex users write (see load-module.ts). */
const MODULE_EXTENSIONS = new Set(['.ts', '.mts', '.cts', '.js', '.mjs', '.cjs']);

function isMigrationFile(file: string): boolean {
  const extension = path.extname(file);
  return (
    (MODULE_EXTENSIONS.has(extension) || extension === '.sql') && !/\.d\.[mc]?ts$/.test(file) && !file.startsWith('.')
  );
}

/**
 * Reads a folder of migrations: Knex modules (ESM, CommonJS or TypeScript) and plain `.sql`
 * files (dbmate's `-- migrate:up` / `-- migrate:down` markers, see sql-file.ts), sorted by file
 * name as Knex sorts them. `variable` names the setting in errors.
 */
export function folderSource(dir: string, variable = 'the migrations folder'): MigrationSource {
  const files = (): string[] => {
    if (!existsSync(dir) || !statSync(dir).isDirectory()) {
      throw new MigrationSourceError(`Migration folder ${dir} does not exist (set ${variable} to change it)`);
    }
    const names = readdirSync(dir).filter(isMigrationFile).sort();
    checkDuplicates(names);
    return names;
  };
  return {
    async load() {
      const migrations: Migration[] = [];
      for (const file of files()) migrations.push(await loadFile(path.join(dir, file), variable));
      return migrations;
    },
    async list() {
      return files().map((name) => {
        const file = path.join(dir, name);
        return { name, file, checksum: checksumOf(readFileSync(file, 'utf8')) };
      });
    },
  };
}

/** Two files that differ only by extension would be applied under two names: refuse them. */
function checkDuplicates(files: readonly string[]): void {
  const seen = new Map<string, string>();
  for (const file of files) {
    const stem = file.slice(0, file.length - path.extname(file).length);
    const other = seen.get(stem);
    if (other !== undefined)
      throw new MigrationSourceError(`Duplicate migration name ${stem}: ${other} and ${file}`, { file });
    seen.set(stem, file);
  }
}

export function checksumOf(content: string): string {
  return createHash('sha256').update(content.replace(/\r\n/g, '\n'), 'utf8').digest('hex');
}

/** The name is the file name with its extension, exactly as Knex records it. */
async function loadFile(file: string, variable: string): Promise<Migration> {
  const name = path.basename(file);
  const content = readFileSync(file, 'utf8');
  const checksum = checksumOf(content);
  if (path.extname(file) === '.sql') {
    let sql: SqlMigration;
    try {
      sql = await sqlMigration(content);
    } catch (error) {
      if (!(error instanceof SqlFileError)) throw error;
      throw new MigrationSourceError(`Cannot load migration ${name}: ${error.message}`, { file, cause: error });
    }
    return { name, file, checksum, ...sql };
  }
  let mod: unknown;
  try {
    mod = await evaluateModule(file, content, checksum.slice(0, 12));
  } catch (error) {
    throw new MigrationSourceError(
      `Cannot load migration ${name}: ${loadErrorReason(error, file)} (fix the file, or move it out of ${variable} if it is not a migration)`,
      { file, cause: error },
    );
  }
  const exported = exportsOf(mod);
  if (typeof exported?.up !== 'function') {
    throw new MigrationSourceError(
      `Migration ${name} does not export an up(knex) function: export one (\`export async function up(knex)\`, or \`exports.up = …\` in CommonJS), or move the file out of ${variable} if it is not a migration`,
      { file },
    );
  }
  if (exported.down !== undefined && typeof exported.down !== 'function') {
    throw new MigrationSourceError(`Migration ${name} exports a down that is not a function`, { file });
  }
  return {
    name,
    file,
    checksum,
    transaction: exported.config?.transaction !== false,
    allowOutsideSchema: exported.config?.allowOutsideSchema === true,
    up: exported.up,
    down: exported.down,
  };
}

/** The module's exports as Knex reads them; CommonJS files compiled by TypeScript arrive under `default`. */
function exportsOf(mod: unknown): Partial<MigrationModule> | undefined {
  if ((typeof mod !== 'object' && typeof mod !== 'function') || mod === null) return undefined;
  const namespace = mod as Partial<MigrationModule> & { default?: Partial<MigrationModule> };
  return typeof namespace.up === 'function' ? namespace : (namespace.default ?? namespace);
}
