/**
 * `pnpm exec tsx bench/runtime.ts [--calls-per-round N]`: the runtime's cost per `withTenant` call
 * against raw `BEGIN; set_config; SELECT; COMMIT` on the same pool and against the same transaction
 * written by hand with Knex (see bench/variants/runtime.ts), on the configured PostgreSQL server. Also available as `pnpm bench --only runtime` once registered.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import dotenv from 'dotenv';
import { openServer } from './server.ts';
import { runtime } from './variants/runtime.ts';

const { values } = parseArgs({ options: { 'calls-per-round': { type: 'string', default: '2000' } } });
const calls = Number(values['calls-per-round']);
if (!Number.isInteger(calls) || calls < 200)
  throw new Error('--calls-per-round must be a whole number of at least 200');
const file = path.join(process.cwd(), '.env');
const server = await openServer({
  ...(existsSync(file) ? dotenv.parse(readFileSync(file, 'utf8')) : {}),
  ...process.env,
});
try {
  const measurements = await runtime.run({
    server,
    tenants: 50,
    big: 10_000, // not a smoke: 50 tenants, 5 rounds
    repeat: 1,
    provisions: calls / 10,
    statements: [],
    log: (line) => void process.stderr.write(`${line}\n`),
  });
  const median = (xs: readonly number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const medianOf = (metric: string): number => median(measurements.find((m) => m.metric === metric)!.values);
  process.stdout.write(
    `PostgreSQL ${await server.version()} at ${server.describe}, pool ${server.poolMax}, ${calls} calls per mode and round, ${measurements[0]!.values.length} rounds\n`,
  );
  for (const m of measurements) {
    const ms = median(m.values);
    // Each mode against the two floors of the same load: raw pg, and the same transaction by hand in Knex.
    const pool = m.metric.endsWith('.pool') ? '.pool' : '';
    const raw = medianOf(`runtime.raw${pool}`);
    const knex = medianOf(`runtime.knex${pool}`);
    process.stdout.write(
      `${m.metric.padEnd(23)} ${(ms * 1000).toFixed(0).padStart(5)} µs/call  ${(ms / raw).toFixed(2)}× raw  ${(ms / knex).toFixed(2)}× knex   [${m.values.map((v) => (v * 1000).toFixed(0)).join(', ')}]\n`,
    );
  }
} finally {
  await server.close();
}
