import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * The toolkit's own version, from its package.json (recorded in the run ledger and shown by
 * `--version`). The file sits one folder up from the sources and from the library build, two up
 * from the CLI bundle (`dist/bin/`).
 */
const OWN = (() => {
  for (const relative of ['../', '../../']) {
    try {
      const url = new URL(relative, import.meta.url);
      const pkg = JSON.parse(readFileSync(new URL('package.json', url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'tenant-migrate') return { root: fileURLToPath(url), version: pkg.version ?? 'unknown' };
    } catch {
      // not there: try the next folder up
    }
  }
  return undefined;
})();

export const TOOLKIT_VERSION: string = OWN?.version ?? 'unknown';

/** The toolkit's package folder (where `init` finds the files it copies), or undefined if not found. */
export const TOOLKIT_ROOT: string | undefined = OWN?.root;
