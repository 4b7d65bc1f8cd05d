import type { Knex } from 'knex';
import { SQLSTATE, sqlState } from '../db/pg-errors.ts';
import { TenantAccessError } from './errors.ts';

/**
 * What `withTenant` leaves on a pooled connection: nothing. Its own scoping is transaction-local
 * (`set_config(…, true)`), but a callback may break the rule and run a session-level `SET
 * search_path`, `SET ROLE` or `set_config(…, false)`, which outlives COMMIT and would reach the
 * next user of the connection. So the scoping statement reads the session's values of the
 * settings below before it changes anything, the COMMIT reads them again in the same round trip,
 * and on a connection whose values changed they are set back (one more round trip, on that path
 * only) before it goes back to the pool; if that fails, the connection is discarded.
 *
 * Why a fixed list and not `pg_settings where source = 'session'`: reading that view costs
 * about 0.5 ms of server time per call (every setting is formatted), more than the rest of a
 * `withTenant` round trip; and `role` is not in it at all (a SET ROLE shows only in
 * `current_user`). These are the settings that change what a query reads, as whom, or how long
 * it may run; a session-level change of any other setting is not detected.
 */
export const WATCHED_SETTINGS = [
  'role',
  'search_path',
  'statement_timeout',
  'lock_timeout',
  'idle_in_transaction_session_timeout',
  'default_transaction_isolation',
  'default_transaction_read_only',
  'TimeZone',
  'DateStyle',
] as const;

const SEPARATOR = '\u001f';

/** One text value holding the watched settings (`current_user` standing for `role`). */
const SIGNATURE = `concat_ws(chr(31), current_user, ${WATCHED_SETTINGS.slice(1)
  .map((name) => `current_setting('${name}')`)
  .join(', ')})`;

/**
 * The first column of the scoping statement when the session is checked. A select list without
 * FROM is evaluated left to right, so it reads the session's values before the `set_config`
 * calls after it change them. (A FROM subquery fenced with `offset 0` says the same more
 * explicitly but cost about 0.8 ms more per call when measured: planning.) The isolation test
 * would see every call reported as a leak if this order ever changed.
 */
export const SESSION_BEFORE_COLUMN = `${SIGNATURE} as session_before`;

/** Sent after `COMMIT;` in the same simple-protocol query. */
const SESSION_AFTER_SQL = `select ${SIGNATURE} as session_after`;

/** Session-level settings a `withTenant` callback changed (set back before its connection was reused). */
export interface SessionLeakEvent {
  readonly orgId: string;
  readonly schema: string;
  readonly changed: readonly { readonly setting: string; readonly before: string; readonly after: string }[];
}

/** The settings that differ between two signatures. */
export function changedSettings(before: string, after: string): SessionLeakEvent['changed'] {
  const a = before.split(SEPARATOR);
  const b = after.split(SEPARATOR);
  return WATCHED_SETTINGS.flatMap((setting, i) =>
    a[i] === b[i] ? [] : [{ setting, before: a[i] ?? '', after: b[i] ?? '' }],
  );
}

let warned = false;

/** The default `onSessionLeak`: one line on `console.warn`, once per process. */
export function warnSessionLeakOnce(event: SessionLeakEvent): void {
  if (warned) return;
  warned = true;
  const what = event.changed.map((c) => `${c.setting} ${JSON.stringify(c.before)} → ${JSON.stringify(c.after)}`);
  console.warn(
    `tenant-migrate: a withTenant callback for ${event.orgId} (${event.schema}) changed session settings (${what.join(', ')}); they were set back, but use SET LOCAL inside withTenant. Further occurrences are not reported here`,
  );
}

interface PooledConnection {
  query(...args: unknown[]): unknown;
  __knex__disposed?: unknown;
}

interface KnexPool {
  acquireConnection(): Promise<PooledConnection>;
  releaseConnection(connection: PooledConnection): Promise<unknown>;
}

type Callback = (error: Error | null, result?: unknown) => void;

/** Sets changed settings back to their values before the callback, at session level. */
function restoreSql(changed: SessionLeakEvent['changed']): { text: string; values: string[] } {
  const values: string[] = [];
  const calls = changed.map(({ setting, before }) => {
    if (setting === 'role') {
      // `current_user` was read: the session user itself means no role was set (SET ROLE NONE).
      values.push(before, before);
      return `set_config('role', case when $${values.length - 1}::text = session_user then 'none' else $${values.length}::text end, false)`;
    }
    values.push(setting, before);
    return `set_config($${values.length - 1}, $${values.length}, false)`;
  });
  return { text: `select ${calls.join(', ')}`, values };
}

/**
 * `knex.transaction(cb)` on a connection of the pool whose COMMIT also reads the watched settings,
 * in the same round trip (`COMMIT; select …` as one simple query). `compare(after)` says which
 * changed; those are set back before the connection returns to the pool (it is discarded if that
 * fails). No COMMIT (the callback threw, the transaction rolled back: a session-level SET is
 * undone with it) means nothing to check.
 */
export async function transactionCheckingSession<T>(
  knex: Knex,
  cb: (trx: Knex.Transaction) => Promise<T>,
  compare: (after: string) => SessionLeakEvent['changed'],
): Promise<T> {
  // Knex has no public "transaction on a connection I hold"; passing `connection` to
  // `transaction()` is its documented-in-code way (it then neither acquires nor releases it).
  const pool = knex.client as unknown as KnexPool;
  const connection = await pool.acquireConnection();
  let after: string | undefined;
  const probing = new Proxy(connection, {
    get(target, property) {
      if (property === 'query') {
        return (config: unknown, ...rest: unknown[]) => {
          const callback = rest.at(-1);
          const text = (config as { text?: unknown } | null)?.text;
          // Knex commits a top-level transaction with exactly this text, no bindings (simple protocol).
          if (text !== 'COMMIT;' || typeof callback !== 'function') return target.query(config, ...rest);
          return target.query(
            { ...(config as object), text: `COMMIT; ${SESSION_AFTER_SQL}` },
            (error: Error | null, results?: unknown) => {
              if (error) return (callback as Callback)(error);
              const [commit, probe] = results as { rows: { session_after?: string }[] }[];
              after = probe?.rows[0]?.session_after;
              (callback as Callback)(null, commit);
            },
          );
        };
      }
      const value = Reflect.get(target, property, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  try {
    const result = await knex.transaction(cb, { connection: probing });
    const changed = after === undefined ? [] : compare(after);
    if (changed.length > 0) {
      const { text, values } = restoreSql(changed);
      await (connection.query({ text, values }) as Promise<unknown>).catch(() => {
        // Knex's own mark for a connection it must not hand out again: the pool destroys it on
        // its next validation and opens a fresh one.
        connection.__knex__disposed = 'a withTenant callback changed session settings that could not be set back';
      });
    }
    return result;
  } finally {
    await pool.releaseConnection(connection);
  }
}

/** The tenant's role cannot be switched to: it is missing, or the application role is not a member of it. */
export class TenantRoleError extends TenantAccessError {
  readonly httpStatus = 503 as const;
  readonly schema: string;
  readonly role: string;

  constructor(orgId: string, schema: string, role: string, cause: unknown) {
    const missing = sqlState(cause) !== SQLSTATE.INSUFFICIENT_PRIVILEGE;
    super(
      'E_TENANT_ROLE',
      orgId,
      `Tenant ${orgId} (${schema}) cannot be served as its role ${role}: ${
        missing ? 'the role does not exist' : 'the application role is not a member of it'
      }; run \`pnpm tenants:roles\` with TENANT_ROLES=on and TENANT_APP_ROLE set to the role the application logs in as`,
    );
    this.schema = schema;
    this.role = role;
    this.cause = cause;
  }
}

/** Whether a failed scoping statement failed on the role switch (`set_config('role', …)`). */
export function isRoleSwitchFailure(error: unknown, role: string): boolean {
  const state = sqlState(error);
  // The whole message: Knex puts the statement's text before the server's words.
  const message = error instanceof Error ? error.message : String(error);
  return (
    (state === SQLSTATE.INSUFFICIENT_PRIVILEGE && message.includes('set role')) ||
    (state === '22023' && message.includes(`role "${role}" does not exist`))
  );
}
