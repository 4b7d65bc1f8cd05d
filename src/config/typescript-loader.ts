/** File names that need a TypeScript loader to be imported on Node 20. */
const TYPESCRIPT_FILE = /\.(?:ts|mts|cts|tsx)$/;

// This file is `typescript-loader.ts` when run through a loader, `typescript-loader.js` when built.
const RUNNING_FROM_SOURCE = import.meta.url.endsWith('.ts');

let registration: Promise<void> | undefined;
const loadedFor: string[] = [];

/**
 * Makes `import()` of a TypeScript file work, registering tsx's loader on first need only: a
 * JavaScript-only project, and `--help`, never load it. Nothing is registered when the toolkit
 * itself runs from its TypeScript sources (its own repository, under `node --import tsx`): a
 * loader is already there.
 */
export function ensureTypeScriptFor(file: string): Promise<void> {
  if (!TYPESCRIPT_FILE.test(file) || RUNNING_FROM_SOURCE) return Promise.resolve();
  if (!registration) {
    loadedFor.push(file);
    // Both of tsx's hooks: `import()` of .ts/.mts, and `require()` of .ts/.cts from CommonJS migrations.
    registration = Promise.all([import('tsx/esm/api'), import('tsx/cjs/api')]).then(([esm, cjs]) => {
      esm.register();
      cjs.register();
    });
  }
  return registration;
}

/** The file that made the toolkit load its TypeScript loader in this process, if any (for `--verbose`). */
export function typeScriptLoaderLoadedFor(): string | undefined {
  return loadedFor[0];
}
