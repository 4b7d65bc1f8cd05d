import pc from 'picocolors';
import { parseDuration, type ToolkitConfig } from '../config/config.ts';
import { connectionFailure, isConnectionLoss } from '../db/connection-errors.ts';
import { UsageError } from '../errors.ts';
import type { Toolkit } from '../toolkit.ts';

/** Options every command accepts. */
export interface CommonOptions {
  readonly json?: boolean;
  readonly verbose?: boolean;
  readonly lockTimeout?: string;
}

/**
 * Reads the environment, applies command-line overrides, opens the toolkit, runs `cb`, and
 * always closes the pool and the embedded engine. The embedded notice goes to stderr so that
 * `--json` keeps stdout to one JSON document.
 */
export async function withToolkit<T>(options: CommonOptions, cb: (toolkit: Toolkit) => Promise<T>): Promise<T> {
  // Loaded here, not at the top: `--help` and commands that need no database never load Knex.
  const [{ configFromProject }, { openToolkit }] = await Promise.all([
    import('../config/project.ts'),
    import('../toolkit.ts'),
  ]);
  const toolkit = await openToolkit(withOverrides(await configFromProject(), options), {
    log: (line) => process.stderr.write(`${pc.dim(line)}\n`),
  });
  // Ctrl-C or a deploy job's SIGTERM: exit at once. The server rolls back every transaction in
  // flight (each tenant is all-or-nothing), and the 'exit' handler releases the embedded folder.
  const onSignal = (signal: NodeJS.Signals): void => {
    process.stderr.write(`Interrupted by ${signal}: transactions in flight are rolled back\n`);
    process.exit(signal === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    return await cb(toolkit);
  } catch (error) {
    throw isConnectionLoss(error) ? connectionFailure(toolkit.location, error, 'Lost the connection to') : error;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await toolkit.close();
  }
}

function withOverrides(config: ToolkitConfig, options: CommonOptions): ToolkitConfig {
  if (options.lockTimeout === undefined) return config;
  const ms = parseDuration(options.lockTimeout);
  if (ms === undefined)
    throw new UsageError(`--lock-timeout must be a duration such as 500ms, 5s or 2m, got "${options.lockTimeout}"`);
  return { ...config, lockTimeoutMs: ms };
}

/** Parses a positive whole number flag, or throws a UsageError naming it. */
export function positiveInteger(flag: string) {
  return (raw: string): number => {
    const value = Number(raw);
    if (!/^\d+$/.test(raw) || value < 1)
      throw new UsageError(`${flag} must be a whole number of at least 1, got "${raw}"`);
    return value;
  };
}

/** Collects a repeatable flag's values. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}
