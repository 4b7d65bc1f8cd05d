import { createHash } from 'node:crypto';
import { UsageError } from '../errors.ts';

/** Hex digits of md5(org id) in a schema name: 10 is what existing deployments use. */
export const DEFAULT_HASH_DIGITS = 10;
/** Longest name derived on collisions: the whole md5 (tid_ + 32 hex = 36 characters, under PostgreSQL's 63). */
export const MAX_HASH_DIGITS = 32;
export const SCHEMA_PREFIX = 'tid_';

const ORG_ID = /^[A-Za-z0-9_-]{1,64}$/;
const TENANT_SCHEMA = /^tid_[0-9a-f]{10,32}$/;
// Control and bidirectional characters would make an echoed id read differently on a terminal.
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

/** JSON-quotes a value for an error message, with invisible characters spelled out. */
function shown(value: string): string {
  return JSON.stringify(value).replace(UNPRINTABLE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/**
 * Whether a registry row's schema name is one the toolkit derives (`tid_` + 10 to 32 hex digits).
 * Anything else (`public`, a hand-edited name) is never migrated or routed to: tenant
 * migrations must not land in a shared schema.
 */
export function isTenantSchemaName(schema: string): boolean {
  return TENANT_SCHEMA.test(schema);
}

/**
 * Checks a Clerk organisation id: 1 to 64 letters, digits, `_` or `-`.
 * Throws a UsageError (exit 2) with one line saying what is wrong; nothing has been written yet.
 */
export function validateOrgId(orgId: unknown): string {
  if (typeof orgId !== 'string' || orgId.length === 0)
    throw new UsageError('Invalid org id: it is empty', { code: 'E_ORG_ID' });
  if (orgId.length > 64)
    throw new UsageError(`Invalid org id: ${orgId.length} characters, at most 64 allowed`, { code: 'E_ORG_ID' });
  if (!ORG_ID.test(orgId)) {
    throw new UsageError(`Invalid org id ${shown(orgId)}: only letters, digits, "_" and "-" are allowed`, {
      code: 'E_ORG_ID',
    });
  }
  return orgId;
}

/**
 * The schema name for an org id: `tid_` + the first `digits` hex digits of md5(org id).
 * `schemaNameFor('default_tenant')` is `tid_cf4116b064`. The registry, not this function,
 * is the source of truth for an existing tenant: a collision gets a longer name.
 */
export function schemaNameFor(orgId: string, digits: number = DEFAULT_HASH_DIGITS): string {
  return SCHEMA_PREFIX + createHash('md5').update(orgId, 'utf8').digest('hex').slice(0, digits);
}

/** The names tried for an org id, in order: 10 hex digits, then 12, 14, … up to the whole hash. */
export function candidateSchemaNames(orgId: string): string[] {
  const names: string[] = [];
  for (let digits = DEFAULT_HASH_DIGITS; digits <= MAX_HASH_DIGITS; digits += 2)
    names.push(schemaNameFor(orgId, digits));
  return names;
}
