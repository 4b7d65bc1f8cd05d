import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { configFromEnvironment } from '../../config/env.ts';
import { UsageError } from '../../errors.ts';

const TEMPLATE = `import type { Knex } from 'knex';

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

/** Knex's file-name timestamp: YYYYMMDDHHMMSS in UTC. */
function timestamp(now: Date): string {
  return now.toISOString().replace(/[-:T]/g, '').slice(0, 14);
}

/** Writes `<dir>/<timestamp>_<name>.ts` from the template; returns the path. */
export function makeMigration(dir: string, name: string, now: Date = new Date()): string {
  if (!/^[A-Za-z0-9_-]{1,100}$/.test(name)) {
    throw new UsageError(`Invalid migration name ${JSON.stringify(name)}: use letters, digits, "_" and "-"`);
  }
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${timestamp(now)}_${name}.ts`);
  if (existsSync(file)) throw new UsageError(`${file} already exists`);
  writeFileSync(file, TEMPLATE, { flag: 'wx' });
  return file;
}

/** `migrate:make:master <name>` and `migrate:make:tenant <name>`. */
export function registerMake(program: Command): void {
  for (const kind of ['master', 'tenant'] as const) {
    program
      .command(`migrate:make:${kind}`)
      .description(`write a timestamped TypeScript ${kind} migration from the template`)
      .argument('<name>', 'what the migration does, e.g. add_focus_area_colour')
      .action((name: string) => {
        const config = configFromEnvironment();
        const file = makeMigration(kind === 'master' ? config.masterMigrationsDir : config.tenantMigrationsDir, name);
        process.stdout.write(`Created ${path.relative(process.cwd(), file)}\n`);
      });
  }
}
