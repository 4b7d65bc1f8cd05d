import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import puppeteer from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToolkit, openToolkit, type Toolkit } from '../src/index.ts';
import { collectFleetReport, type FleetReport } from '../src/report/fleet.ts';
import { renderFleetHtml } from '../src/report/html.ts';
import { deployed, deployFolder, masterFolder, orgIds, provisionAll, V1 } from './fixtures/fan-kit/kit.ts';
import { findBrowser } from './support/browser.ts';
import { folders, runCli } from './support/cli.ts';
import { FIXTURES, ROOT, startEngine, type TestEngine } from './support/engine.ts';

// `migrate:report` (issue 18): one self-contained page, checked in a real browser where one is
// installed (.ci/run installs Debian's chromium); the screenshot is kept in test-output/.

const OUTPUT = path.join(ROOT, 'test-output');
const NEXT = [...V1, '004_member_email.ts', '005_unique_handle.ts'];

let engine: TestEngine;
let tk: Toolkit;
let report: FleetReport;
let file: string;

beforeAll(async () => {
  engine = await startEngine('report');
  tk = await openToolkit(
    engine.config({ ...folders(masterFolder(), deployFolder(V1)), TENANT_EXTENSIONS: '', DB_POOL_MAX: '3' }),
  );
  await tk.migrateMaster();
  // Six tenants at the first release; three move on to 004, two of those fail 005 (duplicates).
  const ids = orgIds('rep', 6);
  const schemas = await provisionAll(tk, ids);
  for (const id of ids.slice(0, 2)) {
    await tk.knex
      .withSchema(schemas.get(id)!)
      .table('members')
      .insert([{ handle: 'x' }, { handle: 'x' }]);
  }
  await deployed(tk, [...V1, '004_member_email.ts']).migrateTenants({ orgIds: ids.slice(0, 3) });
  await deployed(tk, NEXT).migrateTenants({ orgIds: ids.slice(0, 4) });
  // A provisioning failure: a folder whose second migration throws.
  const failing = createToolkit({
    knex: tk.knex,
    config: { ...tk.config, tenantMigrationsDir: path.join(FIXTURES, 'prov-failing') },
  });
  await failing.provisionTenant('org_rep_broken');
  report = await collectFleetReport(tk.knex, await deployed(tk, NEXT).tenantSource.load(), 'test-host:5432');
  mkdirSync(OUTPUT, { recursive: true });
  file = path.join(OUTPUT, `fleet-report-${engine.kind}.html`);
  writeFileSync(file, renderFleetHtml(report));
});

afterAll(async () => {
  await tk?.close();
  await engine?.stop();
});

describe('the fleet report data', () => {
  it('counts tenants per state, per latest applied migration, and groups errors by cause', () => {
    expect(report.tenants).toBe(7);
    expect(report.states).toEqual([
      { status: 'ACTIVE', count: 6 },
      { status: 'FAILED', count: 1 },
    ]);
    expect(report.target).toBe('005_unique_handle.ts');
    expect(report.versions).toEqual([
      { version: '002_settings.ts', count: 2, target: false },
      { version: '004_member_email.ts', count: 2, target: false },
      { version: '005_unique_handle.ts', count: 2, target: true },
    ]);
    const migration = report.errors.find((g) => g.kind === 'migration');
    expect(migration).toMatchObject({ count: 2, migration: '005_unique_handle.ts' });
    expect(migration!.tenants.map((t) => t.orgId)).toEqual(['org_rep_01', 'org_rep_02']);
    expect(report.errors.find((g) => g.kind === 'provisioning')).toMatchObject({ count: 1 });
    expect(report.runs.map((r) => r.command)).toEqual(['migrate:tenants', 'migrate:tenants']);
    expect(report.runs[0]).toMatchObject({ outcome: 'failed', counts: { migrated: 2, failed: 2 } });
    expect(report.runs[0]!.failures).toHaveLength(2);
  });

  it('is one self-contained file: no script, no link, no URL to fetch; the database named without a password', () => {
    const html = readFileSync(file, 'utf8');
    expect(html).not.toMatch(/<script|<link|src=|@import|url\(http/i);
    expect(html).toContain('test-host:5432/');
    expect(html.length).toBeLessThan(200_000);
  });

  it('migrate:report through the CLI writes the page, and --json prints the same data', async () => {
    const out = path.join(OUTPUT, `cli-report-${engine.kind}.html`);
    const env = { ...engine.env, ...folders(masterFolder(), deployFolder(NEXT)), TENANT_EXTENSIONS: '' };
    if (engine.kind === 'embedded') await tk.close(); // one process at a time on the embedded folder
    const written = await runCli(['migrate:report', '--out', out], env);
    expect(written.code, written.stderr).toBe(0);
    expect(written.stdout).toMatch(/Wrote .*cli-report.*7 tenants/);
    expect(readFileSync(out, 'utf8')).toContain('Tenant fleet report');
    const json = await runCli(['migrate:report', '--json'], env);
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({ command: 'migrate:report', tenants: 7, versions: report.versions });
    if (engine.kind === 'embedded') tk = await openToolkit(tk.config);
  });
});

const browser = findBrowser();
if (browser) {
  describe('the page in a real browser', () => {
    it('renders the bars, the error counts and the runs; the screenshot is kept in test-output/', async () => {
      const chrome = await puppeteer.launch({
        executablePath: browser,
        headless: true,
        args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
      });
      try {
        const page = await chrome.newPage();
        await page.setViewport({ width: 1200, height: 1000 });
        await page.goto(`file://${file}`, { waitUntil: 'load' });
        const bars = await page.$$eval('#versions-chart svg rect.bar', (rects) =>
          rects.map((r) => [
            r.getAttribute('data-label'),
            r.getAttribute('data-count'),
            r.getBoundingClientRect().width,
          ]),
        );
        expect(bars.map(([label, count]) => [label, count])).toEqual([
          ['002_settings.ts', '2'],
          ['004_member_email.ts', '2'],
          ['005_unique_handle.ts', '2'],
        ]);
        for (const [, , width] of bars) expect(width).toBeGreaterThan(0);
        const errorCounts = await page.$$eval('table.errors td.error-count', (cells) =>
          cells.map((c) => c.textContent),
        );
        expect(errorCounts.sort()).toEqual(['1', '2']);
        const runRows = await page.$$eval('table.runs tbody tr', (rows) => rows.length);
        expect(runRows).toBe(2);
        // biome-ignore lint/performance/useDomNodeTextContent: what a person sees is the point here
        const visibleText = await page.evaluate(() => document.body.innerText);
        expect(visibleText).toMatch(/◀ target/);
        await page.screenshot({ path: path.join(OUTPUT, `fleet-report-${engine.kind}.png`), fullPage: true });
      } finally {
        await chrome.close();
      }
    }, 60_000);
  });
}
