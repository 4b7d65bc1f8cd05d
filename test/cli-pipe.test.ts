import { describe, expect, it } from 'vitest';
import { finished, startCli } from './support/cli.ts';

describe('output to a closed pipe (`tenant-migrate … | head`)', () => {
  it('is dropped quietly: no EPIPE crash, the command exits as it would have', async () => {
    const child = startCli(['--help'], {});
    child.stdout?.destroy(); // the reader is gone before the first line is written
    const result = await finished(child);
    expect(result.stderr).not.toContain('EPIPE');
    expect(result.code).toBe(0);
  });
});
