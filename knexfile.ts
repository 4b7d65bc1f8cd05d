/**
 * A knexfile for Knex's own CLI, pointing at the master history, so that
 *   node --import tsx node_modules/knex/bin/cli.js --knexfile knexfile.ts migrate:list
 * shows what `pnpm migrate:master` applied. The toolkit itself does not read this file: it
 * reads the same environment (DATABASE_URL or DB_*, .env) through src/config.
 * With no database configured, it starts the embedded engine for the command's duration.
 */
import type { Knex } from 'knex';
import { configFromEnvironment } from './src/config/env.ts';
import { embeddedTarget, knexConfigFor } from './src/db/connection.ts';
import { startEmbedded } from './src/db/embedded.ts';
import { MASTER_TRACKING_TABLE } from './src/migrations/targets.ts';

const config = configFromEnvironment();
const target =
  config.connection.kind === 'server'
    ? config.connection
    : embeddedTarget(await startEmbedded(config.connection.dataDir));

const knexConfig: Knex.Config = {
  ...knexConfigFor(target, 1),
  migrations: {
    directory: config.masterMigrationsDir,
    tableName: MASTER_TRACKING_TABLE,
    schemaName: 'public',
    loadExtensions: ['.ts', '.js'],
  },
};

export default knexConfig;
