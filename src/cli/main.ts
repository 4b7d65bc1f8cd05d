#!/usr/bin/env node
import { Command, CommanderError } from 'commander';
import pc from 'picocolors';
import { typeScriptLoaderLoadedFor } from '../config/typescript-loader.ts';
import { connectionFailure, isConnectionLoss } from '../db/connection-errors.ts';
import { ToolkitError } from '../errors.ts';
import { TOOLKIT_VERSION } from '../version.ts';
import { COMMANDS } from './commands/index.ts';

/** The one CLI entry point behind the package.json scripts. */
export async function main(argv: readonly string[]): Promise<number> {
  const program = new Command('tenant-migrate')
    .description('Schema-per-tenant migrations for PostgreSQL on Knex')
    .version(TOOLKIT_VERSION, '-V, --version', 'print the version')
    .option('--verbose', 'show stack traces for errors (also: DEBUG=1)')
    .option('--config <file>', 'read settings from this file (default: tenant-migrate.config.* or knexfile)')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  for (const register of COMMANDS) register(program);
  for (const c of program.commands) {
    c.exitOverride()
      .option('--verbose', 'show stack traces for errors (also: DEBUG=1)')
      .option('--config <file>', 'read settings from this file (default: tenant-migrate.config.* or knexfile)');
  }
  // The config file is read where the environment is (configFromProject), under the environment.
  program.hook('preAction', (_program, command) => {
    const file = (command.opts() as { config?: string }).config ?? (program.opts() as { config?: string }).config;
    if (file !== undefined) process.env.TENANT_MIGRATE_CONFIG = file;
  });
  const verbose = argv.includes('--verbose') || Boolean(process.env.DEBUG);
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return Number(process.exitCode ?? 0);
  } catch (error) {
    return report(error, verbose);
  } finally {
    const ts = typeScriptLoaderLoadedFor();
    if (verbose && ts !== undefined) process.stderr.write(pc.dim(`(loaded the TypeScript loader for ${ts})\n`));
  }
}

/** Prints an error as one line (stack only when verbose) and returns the exit code. */
function report(error: unknown, verbose: boolean): number {
  if (error instanceof CommanderError) {
    // Commander has printed its own message; help and version are not errors.
    return error.exitCode === 0 || error.code === 'commander.helpDisplayed' || error.code === 'commander.version'
      ? 0
      : 2;
  }
  let known: ToolkitError | undefined = error instanceof ToolkitError ? error : undefined;
  if (!known && isConnectionLoss(error)) known = connectionFailure('the database', error, 'Lost the connection to');
  const message = known ? known.message : `unexpected error: ${(error as Error)?.message ?? String(error)}`;
  process.stderr.write(`${pc.red('error:')} ${message}\n`);
  if (verbose) process.stderr.write(`${(error as Error)?.stack ?? ''}\n${causeChain(error)}`);
  else if (!known) process.stderr.write(pc.dim('(run with --verbose or DEBUG=1 for the stack trace)\n'));
  return known?.exitCode ?? 1;
}

function causeChain(error: unknown): string {
  let text = '';
  for (let cause = (error as Error)?.cause, depth = 0; cause && depth < 5; cause = (cause as Error).cause, depth++) {
    text += `caused by: ${(cause as Error).stack ?? String(cause)}\n`;
  }
  return text;
}

// `tenant-migrate status | head`: once the reader is gone, output is dropped and the command
// finishes its work (a deploy must not stop half way because nobody reads its log any more).
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EPIPE') throw error;
  });
}

const code = await main(process.argv.slice(2));
process.exitCode = code;
