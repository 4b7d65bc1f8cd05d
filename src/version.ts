import { readFileSync } from 'node:fs';

/** The toolkit's own version, from its package.json (recorded in the run ledger). */
export const TOOLKIT_VERSION: string = (() => {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
})();
