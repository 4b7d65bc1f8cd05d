import type { Statement } from '../capture.ts';
import type { Server } from '../server.ts';

/** What every variant gets: the server, the sizes, and the SQL the migrations emit. */
export interface BenchContext {
  readonly server: Server;
  /** Fleet size of the head-to-head migration (default 1000). */
  readonly tenants: number;
  /** Fleet size of the no-op, status and memory measurements (default 10,000). */
  readonly big: number;
  /** Runs of the whole-command measurements inside the `big` variant. */
  readonly repeat: number;
  /** Tenants provisioned one by one for the provisioning latency. */
  readonly provisions: number;
  readonly statements: readonly Statement[];
  log(line: string): void;
}

/** Values of one metric from one variant run: durations in ms, memory in kB. */
export interface Measurement {
  readonly metric: string;
  readonly unit: 'ms' | 'kB' | 'rows';
  /** Fleet size it was taken at. */
  readonly tenants: number;
  readonly values: readonly number[];
}

/** One contender, run on its own freshly created database each time. */
export interface Variant {
  readonly name: string;
  readonly description: string;
  run(ctx: BenchContext): Promise<Measurement[]>;
}
