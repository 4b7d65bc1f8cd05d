import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Knex } from 'knex';
import { MigrationSourceError, messageOf } from '../errors.ts';

/** What a migration file exports: Knex's own module shape. */
export interface MigrationModule {
  up(knex: Knex): Promise<unknown> | unknown;
  down?(knex: Knex): Promise<unknown> | unknown;
  config?: { transaction?: boolean };
}

/** One loaded migration. `name` is the file name, as Knex records it. */
export interface Migration {
  readonly name: string;
  readonly file: string;
  /** sha256 of the file with line endings normalised, recorded when it is applied. */
  readonly checksum: string;
  /** False when the file exports `config = { transaction: false }`. */
  readonly transaction: boolean;
  readonly up: (knex: Knex) => Promise<unknown> | unknown;
  readonly down: ((knex: Knex) => Promise<unknown> | unknown) | undefined;
}

/** Where migrations come from. The folder source is the real one; tests may hand in others. */
export interface MigrationSource {
  /** Every migration, sorted by name; throws MigrationSourceError naming the file when one is unusable. */
  load(): Promise<readonly Migration[]>;
}

const EXTENSIONS = new Set(['.ts', '.mts', '.cts', '.js', '.mjs', '.cjs']);

function isMigrationFile(file: string): boolean {
  return EXTENSIONS.has(path.extname(file)) && !/\.d\.[mc]?ts$/.test(file) && !file.startsWith('.');
}

/** Reads a folder of Knex migration modules (`.ts` or `.js`). `variable` names the setting in errors. */
export function folderSource(dir: string, variable = 'the migrations folder'): MigrationSource {
  return {
    async load() {
      if (!existsSync(dir) || !statSync(dir).isDirectory()) {
        throw new MigrationSourceError(`Migration folder ${dir} does not exist (set ${variable} to change it)`);
      }
      const files = readdirSync(dir).filter(isMigrationFile).sort();
      checkDuplicates(files);
      const migrations: Migration[] = [];
      for (const file of files) migrations.push(await loadFile(path.join(dir, file)));
      return migrations;
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

/** The line of a load error that says where: esbuild puts `file:line:col: ERROR: …` after a header. */
function loadErrorLine(error: unknown): string {
  const text = (error as Error | undefined)?.message ?? String(error);
  const located = text.split('\n').find((line) => /:\d+:\d+: ERROR: /.test(line));
  return located ? located.replace(/^.*[\\/]/, '').trim() : messageOf(error);
}

export function checksumOf(content: string): string {
  return createHash('sha256').update(content.replace(/\r\n/g, '\n'), 'utf8').digest('hex');
}

async function loadFile(file: string): Promise<Migration> {
  const name = path.basename(file);
  const checksum = checksumOf(readFileSync(file, 'utf8'));
  let mod: Partial<MigrationModule> & { default?: Partial<MigrationModule> };
  try {
    // The checksum in the URL makes an edited file load afresh in a long-lived process.
    mod = await import(`${pathToFileURL(file).href}?v=${checksum.slice(0, 12)}`);
  } catch (error) {
    throw new MigrationSourceError(`Cannot load migration ${name}: ${loadErrorLine(error)}`, { file, cause: error });
  }
  // CommonJS files compiled by TypeScript arrive under `default`.
  const exported = typeof mod.up === 'function' ? mod : (mod.default ?? mod);
  if (typeof exported.up !== 'function') {
    throw new MigrationSourceError(`Migration ${name} does not export an up(knex) function`, { file });
  }
  if (exported.down !== undefined && typeof exported.down !== 'function') {
    throw new MigrationSourceError(`Migration ${name} exports a down that is not a function`, { file });
  }
  return {
    name,
    file,
    checksum,
    transaction: exported.config?.transaction !== false,
    up: exported.up,
    down: exported.down,
  };
}
