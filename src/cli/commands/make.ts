import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { UsageError } from '../../errors.ts';

const TS_TEMPLATE = `import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  // Unqualified names resolve to the target schema first, then public.
  // await knex.schema.createTable('example', (table) => {
  //   table.increments('id');
  // });
}

export async function down(knex: Knex): Promise<void> {
  // await knex.schema.dropTable('example');
}

// Uncomment for statements that cannot run in a transaction (CREATE INDEX CONCURRENTLY):
// export const config = { transaction: false };
`;

// dbmate's markers; the convention is described in src/migrations/sql-file.ts.
const SQL_TEMPLATE = `-- Unqualified names resolve to the target schema first, then public.
-- For statements that cannot run in a transaction (CREATE INDEX CONCURRENTLY), write the
-- marker as "-- migrate:up transaction:false": that section then runs statement by statement.

-- migrate:up
-- create table example (id bigint generated always as identity primary key);

-- migrate:down
-- drop table example;
`;

/** The kinds of file `migrate:make:*` writes. */
export type MigrationFormat = 'ts' | 'sql';

/** Knex's file-name timestamp: YYYYMMDDHHMMSS in UTC. */
function timestamp(now: Date): string {
  return now.toISOString().replace(/[-:T]/g, '').slice(0, 14);
}

/** Writes `<dir>/<timestamp>_<name>.ts` (or `.sql`) from the template; returns the path. */
export function makeMigration(
  dir: string,
  name: string,
  options: { readonly format?: MigrationFormat; readonly now?: Date } = {},
): string {
  const { format = 'ts', now = new Date() } = options;
  if (!/^[A-Za-z0-9_-]{1,100}$/.test(name)) {
    throw new UsageError(`Invalid migration name ${JSON.stringify(name)}: use letters, digits, "_" and "-"`);
  }
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${timestamp(now)}_${name}.${format}`);
  if (existsSync(file)) throw new UsageError(`${file} already exists`);
  writeFileSync(file, format === 'sql' ? SQL_TEMPLATE : TS_TEMPLATE, { flag: 'wx' });
  return file;
}

/** `migrate:make:master [--sql] <name>` and `migrate:make:tenant [--sql] <name>`. */
export function registerMake(program: Command): void {
  for (const kind of ['master', 'tenant'] as const) {
    program
      .command(`migrate:make:${kind}`)
      .description(`write a timestamped ${kind} migration (TypeScript, or SQL with --sql) from the template`)
      .argument('<name>', 'what the migration does, e.g. add_focus_area_colour')
      .option('--sql', 'write a plain .sql migration with "-- migrate:up" and "-- migrate:down" sections')
      .action(async (name: string, options: { sql?: boolean }) => {
        const { configFromProject } = await import('../../config/project.ts');
        const config = await configFromProject();
        const dir = kind === 'master' ? config.masterMigrationsDir : config.tenantMigrationsDir;
        const file = makeMigration(dir, name, { format: options.sql ? 'sql' : 'ts' });
        process.stdout.write(`Created ${path.relative(process.cwd(), file)}\n`);
      });
  }
}
