import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { type CommonOptions, withToolkit } from '../context.ts';
import { createOutput } from '../render.ts';

/** `migrate:report`: one self-contained HTML page of where the fleet stands (or its data with --json). */
export function registerReport(program: Command): void {
  program
    .command('migrate:report')
    .description('write a self-contained HTML page of the fleet: versions, states, errors, recent runs')
    .option('--out <file>', 'where to write the page', 'fleet-report.html')
    .option('--open', 'open it in the desktop browser afterwards (where a desktop exists)')
    .option('--json', 'print the report data as one JSON document instead of writing the page')
    .action(async (flags: CommonOptions & { out: string; open?: boolean }) => {
      const out = createOutput(flags.json ?? false);
      const [{ collectFleetReport }, { renderFleetHtml }] = await Promise.all([
        import('../../report/fleet.ts'),
        import('../../report/html.ts'),
      ]);
      const report = await withToolkit(flags, async (tk) =>
        collectFleetReport(tk.knex, await tk.tenantSource.load(), tk.location),
      );
      if (flags.json) {
        out.document({ command: 'migrate:report', ...report });
        return;
      }
      const file = path.resolve(flags.out);
      const html = renderFleetHtml(report);
      writeFileSync(file, html);
      out.line(`Wrote ${file} (${Math.ceil(Buffer.byteLength(html) / 1024)} kB, ${report.tenants} tenants)`);
      if (flags.open) openInBrowser(file, out.line);
    });
}

/** The desktop's opener, when there is a desktop; otherwise a line saying where the file is. */
function openInBrowser(file: string, line: (text: string) => void): void {
  const opener = process.platform === 'darwin' ? 'open' : process.platform === 'win32' ? 'explorer' : 'xdg-open';
  if (process.platform === 'linux' && !process.env.DISPLAY && !process.env.WAYLAND_DISPLAY) {
    line('No desktop here (DISPLAY is not set): open the file in a browser yourself');
    return;
  }
  const child = spawn(opener, [file], { detached: true, stdio: 'ignore' });
  child.on('error', () => line(`Could not run ${opener}: open the file in a browser yourself`));
  child.unref();
}
