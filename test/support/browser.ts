import { existsSync } from 'node:fs';

/**
 * A real browser for the page tests: `CHROMIUM_PATH`, else Debian's `chromium` (which `.ci/run`
 * installs), else Chrome where it is installed. Undefined when none is here: tests that need one
 * are then not registered, and a test of what holds without a browser runs instead.
 */
export function findBrowser(): string | undefined {
  const candidates = [
    process.env.CHROMIUM_PATH,
    '/usr/bin/chromium',
    '/usr/bin/chromium-browser',
    '/usr/bin/google-chrome',
    '/Applications/Google Chrome.app/Contents/MacOS/Google Chrome',
  ];
  return candidates.find((file): file is string => Boolean(file) && existsSync(file!));
}
