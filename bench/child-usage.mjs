/**
 * Preloaded into the CLI child (`node --import bench/child-usage.mjs dist/bin/main.js …`; plain JavaScript, so that
 * measuring start-up loads no TypeScript loader):
 * on exit, writes the process's peak resident set size (kB) and CPU time (ms) as JSON to
 * BENCH_USAGE_FILE. Portable where `/usr/bin/time -v` is not, and it sees the whole run.
 * CPU time is the figure least disturbed by other work on the machine.
 */
import { writeFileSync } from 'node:fs';

const file = process.env.BENCH_USAGE_FILE;
if (file) {
  process.on('exit', () => {
    const usage = process.resourceUsage();
    writeFileSync(
      file,
      JSON.stringify({ maxRssKb: usage.maxRSS, cpuMs: (usage.userCPUTime + usage.systemCPUTime) / 1000 }),
    );
  });
}
