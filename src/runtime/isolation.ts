import type { Knex } from 'knex';
import { discardConnection } from '../db/dedicated.ts';
import { SQLSTATE, sqlState } from '../db/pg-errors.ts';
import { TenantAccessError } from './errors.ts';

/**
 * What `withTenant` leaves on a pooled connection: nothing. Its own scoping is transaction-local
 * (`SET LOCAL`), but a callback may break the rule and run a session-level `SET
 * search_path`, `SET ROLE` or `set_config(…, false)`, which outlives COMMIT and would reach the
 * next user of the connection. So the scoping query reads the session's values of the
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
 * Selected by the scoping query when the session is checked: its own statement, right after
 * BEGIN and before the statements that set the search path and the role, so it reads the
 * session's values before they change. The isolation test would see every call reported as a
 * leak if this order ever changed.
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
  query(config: { text: string; values: string[] }): Promise<unknown>;
}

/** What Knex hands to a transaction's client: its text (BEGIN, COMMIT) or a compiled query. */
type KnexQuery = string | { sql: string };
type ClientQuery = (connection: PooledConnection, query: KnexQuery) => Promise<{ response?: unknown }>;

/** `COMMIT` and the second read of the watched settings: one simple-protocol query, one round trip. */
const COMMIT_AND_READ = `COMMIT; ${SESSION_AFTER_SQL}`;

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
 * Makes the COMMIT of `trx` also read the watched settings, in the same round trip (`COMMIT;
 * select …` as one simple query), and compares them with `before` (read by the scoping query
 * at the start of the transaction). Settings found changed are set back before Knex releases the
 * connection to the pool (one more round trip, on that path only; if that fails, the connection
 * is discarded), then reported to `onChanged`. No COMMIT (the callback threw, the transaction rolled
 * back: a session-level SET is undone with it) means nothing to check.
 *
 * How: Knex gives every transaction a client object of its own, through which it sends the
 * transaction's BEGIN, its queries and its COMMIT (exactly the string `COMMIT;`; compiled
 * queries arrive as objects). That object's `query` is replaced for this transaction only: it
 * is discarded with the transaction, so nothing outlives it, and the callback still receives
 * Knex's own transaction. (It replaces a Proxy around the pooled connection, made per call, which
 * bound a function on every property access Knex and pg made through it.)
 */
export function checkSessionAtCommit(
  trx: Knex.Transaction,
  before: string,
  onChanged: (changed: SessionLeakEvent['changed']) => void,
): void {
  const client = trx.client as unknown as { query: ClientQuery };
  const query = client.query;
  client.query = function (this: unknown, connection, sent) {
    if (sent !== 'COMMIT;') return query.call(this, connection, sent);
    return query.call(this, connection, { sql: COMMIT_AND_READ }).then(async (result) => {
      const [, read] = result.response as { rows: { session_after?: string }[] }[];
      const after = read?.rows[0]?.session_after;
      if (after === undefined || after === before) return result;
      const changed = changedSettings(before, after);
      await connection.query(restoreSql(changed)).catch(() => {
        discardConnection(connection, 'a withTenant callback changed session settings that could not be set back');
      });
      // After the restore: a throwing `onChanged` cannot leave the settings on the connection.
      onChanged(changed);
      return result;
    });
  };
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

/** Whether a failed scoping query failed on the role switch (`SET LOCAL ROLE`). */
export function isRoleSwitchFailure(error: unknown, role: string): boolean {
  const state = sqlState(error);
  // The whole message: Knex puts the statement's text before the server's words.
  const message = error instanceof Error ? error.message : String(error);
  return (
    (state === SQLSTATE.INSUFFICIENT_PRIVILEGE && message.includes('set role')) ||
    (state === '22023' && message.includes(`role "${role}" does not exist`))
  );
}
