import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import dotenv from 'dotenv';
import { type Env, loadConfig, type ToolkitConfig } from './config.ts';

/**
 * Reads `.env` (if present) under the real environment, which wins, and validates the result.
 * The edge of the toolkit: the library itself only ever takes a ToolkitConfig.
 */
export function configFromEnvironment(cwd: string = process.cwd(), env: Env = process.env): ToolkitConfig {
  return loadConfig({ ...dotenvVariables(cwd), ...env }, cwd);
}

/** The variables of `cwd/.env`, or none when there is no such file. */
export function dotenvVariables(cwd: string): Record<string, string> {
  const file = path.join(cwd, '.env');
  return existsSync(file) ? dotenv.parse(readFileSync(file, 'utf8')) : {};
}
