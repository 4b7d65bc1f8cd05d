/**
 * Preloaded into the CLI child (`node --import tsx-loader --import bench/max-rss.ts …`):
 * writes the process's peak resident set size, in kilobytes, to BENCH_MAX_RSS_FILE on exit.
 * Portable where `/usr/bin/time -v` is not, and it sees the whole run up to the last byte.
 */
import { writeFileSync } from 'node:fs';

const file = process.env.BENCH_MAX_RSS_FILE;
if (file) process.on('exit', () => writeFileSync(file, String(process.resourceUsage().maxRSS)));
