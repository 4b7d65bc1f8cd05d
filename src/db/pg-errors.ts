/** PostgreSQL SQLSTATE codes the toolkit reacts to, by name. */
export const SQLSTATE = {
  UNIQUE_VIOLATION: '23505',
  UNDEFINED_TABLE: '42P01',
  UNDEFINED_COLUMN: '42703',
  INVALID_SCHEMA_NAME: '3F000',
  DUPLICATE_SCHEMA: '42P06',
  DUPLICATE_OBJECT: '42710',
  LOCK_NOT_AVAILABLE: '55P03',
  QUERY_CANCELED: '57014',
  ADMIN_SHUTDOWN: '57P01',
  INVALID_PASSWORD: '28P01',
  INVALID_AUTHORIZATION: '28000',
  INVALID_CATALOG_NAME: '3D000',
  FEATURE_NOT_SUPPORTED: '0A000',
  UNDEFINED_FILE: '58P01',
  INSUFFICIENT_PRIVILEGE: '42501',
} as const;

/**
 * The SQLSTATE of a database error, if it is one. Node's system errors also carry a `code`, some
 * of five letters (EPIPE, EPERM): every SQLSTATE class holds a digit (00-58, F0, HV, P0, XX), so a
 * code of letters only is never one.
 */
export function sqlState(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) && /[0-9]/.test(code) ? code : undefined;
}

/** Network-level error codes of Node (ECONNREFUSED, ETIMEDOUT, …), if the error is one. */
export function networkErrorCode(error: unknown): string | undefined {
  let current: unknown = error;
  for (let depth = 0; current && depth < 5; depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) return code;
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}
