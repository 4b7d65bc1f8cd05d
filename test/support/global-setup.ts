import { ensureBuilt } from './package.ts';

/**
 * Once before any test file: build the package when the sources are newer than dist/, so that
 * the CLI tests run the built binary users run (and start in a fraction of tsx's time).
 */
export default function setup(): void {
  ensureBuilt();
}
