import { ConnectionError, ToolkitError } from '../errors.ts';
import { networkErrorCode, SQLSTATE, sqlState } from './pg-errors.ts';

// Kept apart from connection.ts (which loads Knex) so that the CLI can name a lost connection
// without loading the driver.

/**
 * Whether an error means the connection itself went away (network error, server shutdown or
 * termination, pg's "Connection terminated"), as opposed to a statement failing.
 */
export function isConnectionLoss(error: unknown): boolean {
  if (error instanceof ToolkitError) return false;
  const state = sqlState(error);
  if (state && (state.startsWith('08') || ['57P01', '57P02', '57P03'].includes(state))) return true;
  if (networkErrorCode(error)) return true;
  const message = (error as Error | undefined)?.message ?? '';
  return /Connection terminated|not queryable|Client has encountered a connection error|terminating connection/i.test(
    message,
  );
}

/** Turns a driver error met while connecting into one line naming the server and the reason. */
export function connectionFailure(where: string, error: unknown, verb = 'Cannot connect to'): ToolkitError {
  if (error instanceof ToolkitError) return error;
  const state = sqlState(error);
  const network = networkErrorCode(error);
  const detail = (error as Error | undefined)?.message?.split('\n')[0] ?? String(error);
  let reason: string;
  if (network) reason = `${network}${detail.includes(network) ? '' : ` (${detail})`}`;
  else if (state === SQLSTATE.INVALID_PASSWORD || state === SQLSTATE.INVALID_AUTHORIZATION)
    reason = `authentication failed: ${detail}`;
  else if (state === SQLSTATE.INVALID_CATALOG_NAME) reason = detail;
  else if (/timeout/i.test(detail)) reason = `timed out (${detail})`;
  else reason = detail;
  return new ConnectionError(`${verb} PostgreSQL at ${where}: ${reason}`, error);
}
