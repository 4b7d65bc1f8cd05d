import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import dotenv from 'dotenv';
import { type Env, loadConfig, type ToolkitConfig } from './config.ts';

/**
 * Reads `.env` (if present) under the real environment, which wins, and validates the result.
 * The edge of the toolkit: the library itself only ever takes a ToolkitConfig.
 */
export function configFromEnvironment(cwd: string = process.cwd(), env: Env = process.env): ToolkitConfig {
  const file = path.join(cwd, '.env');
  const fromFile = existsSync(file) ? dotenv.parse(readFileSync(file, 'utf8')) : {};
  return loadConfig({ ...fromFile, ...env }, cwd);
}
