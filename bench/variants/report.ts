import { mkdtempSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import puppeteer from 'puppeteer-core';
import { digestOf } from '../../src/migrations/plan.ts';
import { folderSource } from '../../src/migrations/source.ts';
import { findBrowser } from '../../test/support/browser.ts';
import { commandMeasurements, runCommand } from '../cli.ts';
import { migrateMaster } from '../seed.ts';
import { BENCH_MIGRATIONS, withFreshDatabase } from '../server.ts';
import { toolkitEnv } from './toolkit.ts';
import type { Measurement, Variant } from './types.ts';

/** Registry rows for the report at scale (100,000; 1,000 with --smoke): the report reads the registry only. */
const ROWS = { full: 100_000, smoke: 1_000 };

/**
 * `migrate:report` over a registry of 100,000 tenants (rows generated in SQL: spread over every
 * version of the bench migrations, a few FAILED, some with a migration error), as the whole
 * command; the page's size; and, where a browser is installed, the time until its load event.
 */
export const report: Variant = {
  name: 'report',
  description: 'migrate:report over 100,000 registry rows: the command, the page size, the render time',
  run: (ctx) =>
    withFreshDatabase(ctx.server, 'report', async (database): Promise<Measurement[]> => {
      const n = ctx.big <= 1000 ? ROWS.smoke : ROWS.full;
      await migrateMaster(ctx.server, database);
      const names = (await folderSource(BENCH_MIGRATIONS).load()).map((m) => m.name);
      const digests = names.map((_, k) => digestOf(names.slice(0, k + 1)));
      const client = await ctx.server.client(database);
      try {
        await client.query(
          `insert into public.tenants (clerk_org_id, schema_name, status, migrations_digest, error, last_migration_error)
           select 'org_report_' || i, 'tid_' || left(md5('org_report_' || i), 10),
                  case when i % 97 = 0 then 'FAILED' else 'ACTIVE' end,
                  ($2::text[])[1 + (i % array_length($2::text[], 1))],
                  case when i % 97 = 0 then 'extension "vector" is not available' end,
                  case when i % 13 = 0 then '003_x.ts (up) failed: duplicate key value violates unique constraint' end
             from generate_series(1, $1::int) i`,
          [n, digests],
        );
      } finally {
        await client.end();
      }
      const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-report-'));
      try {
        const file = path.join(dir, 'fleet.html');
        const run = await runCommand(['migrate:report', '--out', file], toolkitEnv(ctx.server, database));
        const out = [
          ...commandMeasurements('report.toolkit', n, [run], { rss: true }),
          { metric: 'report.size', unit: 'kB' as const, tenants: n, values: [statSync(file).size / 1024] },
        ];
        const render = await renderMs(file);
        if (render !== undefined) out.push({ metric: 'report.render', unit: 'ms', tenants: n, values: [render] });
        else ctx.log('  no browser installed: the report render time is not measured');
        return out;
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }),
};

/** Milliseconds from navigation start to the load event in headless Chromium, or undefined without one. */
async function renderMs(file: string): Promise<number | undefined> {
  const executablePath = findBrowser();
  if (!executablePath) return undefined;
  const browser = await puppeteer.launch({
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  try {
    const page = await browser.newPage();
    await page.goto(`file://${file}`, { waitUntil: 'load' });
    return await page.evaluate(() => {
      const [nav] = performance.getEntriesByType('navigation') as PerformanceNavigationTiming[];
      return nav ? nav.loadEventEnd - nav.startTime : performance.now();
    });
  } finally {
    await browser.close();
  }
}
