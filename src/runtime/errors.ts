import { ToolkitError } from '../errors.ts';

/**
 * Why a tenant cannot be served right now: still being provisioned, provisioning failed, being
 * moved to another server (`tenant:move`), its registry row has a status set by hand, or its
 * schema is missing from the database.
 */
export type TenantUnavailableReason =
  | 'provisioning'
  | 'failed'
  | 'moving'
  | 'inactive'
  | 'schema-missing'
  | 'schema-invalid'
  | 'server-unknown';

/**
 * Base of the errors `withTenant` throws before running the callback. `httpStatus` is the
 * answer an application usually maps it to; the callback never ran and nothing was written.
 */
export abstract class TenantAccessError extends ToolkitError {
  readonly orgId: string;
  abstract readonly httpStatus: 404 | 410 | 503;

  constructor(code: string, orgId: string, message: string) {
    super(code, message);
    this.orgId = orgId;
  }
}

/** No tenant is registered for this org id (or the id is malformed): usually a 404. */
export class TenantNotFoundError extends TenantAccessError {
  readonly httpStatus = 404 as const;

  constructor(orgId: string, detail = 'no tenant is registered for it') {
    super('E_TENANT_NOT_FOUND', orgId, `Tenant ${JSON.stringify(orgId)} not found: ${detail}`);
  }
}

/** The tenant is registered but cannot be served (see `reason`): usually a 503. */
export class TenantUnavailableError extends TenantAccessError {
  readonly httpStatus = 503 as const;
  readonly reason: TenantUnavailableReason;
  readonly schema: string;
  /** The registry status when the check was made (`ACTIVE` for a missing schema; the server's name for `server-unknown`). */
  readonly status: string;

  constructor(
    orgId: string,
    schema: string,
    status: string,
    reason: TenantUnavailableReason,
    code = 'E_TENANT_UNAVAILABLE',
  ) {
    super(code, orgId, `Tenant ${orgId} (${schema}) is unavailable: ${describeReason(reason, status)}`);
    this.reason = reason;
    this.schema = schema;
    this.status = status;
  }
}

/**
 * The tenant is being copied to another server (`tenant:move`, status MOVING): neither reads nor
 * writes are served until the registry switches it to its new server, which takes as long as
 * the copy (seconds to minutes). A 503 with `Retry-After`: retry shortly. A subclass of
 * TenantUnavailableError, so a handler of that one already answers 503.
 */
export class TenantMovingError extends TenantUnavailableError {
  constructor(orgId: string, schema: string) {
    super(orgId, schema, 'MOVING', 'moving', 'E_TENANT_MOVING');
  }
}

/**
 * The tenant is ARCHIVED (`tenant:archive`: not served, schema and data kept until `tenant:restore`)
 * or, as the subclass TenantDeletedError, DELETED (`tenant:drop`): usually a 410 Gone. The
 * scoping statement re-reads the status in every transaction, so a cached entry never serves an
 * archived tenant. The provisioner refuses such an org id with the same errors.
 */
export class TenantArchivedError extends TenantAccessError {
  readonly httpStatus = 410 as const;
  readonly schema: string;
  /** `ARCHIVED`, or `DELETED` for a TenantDeletedError. */
  readonly status: 'ARCHIVED' | 'DELETED';

  constructor(orgId: string, schema: string, status: 'ARCHIVED' | 'DELETED' = 'ARCHIVED') {
    super(
      status === 'DELETED' ? 'E_TENANT_DELETED' : 'E_TENANT_ARCHIVED',
      orgId,
      status === 'DELETED'
        ? `Tenant ${orgId} (${schema}) was deleted: its schema was dropped and the org id is never reused`
        : `Tenant ${orgId} (${schema}) is archived: it is not served until \`tenant:restore\` brings it back`,
    );
    this.schema = schema;
    this.status = status;
  }
}

/** The tenant was dropped (`tenant:drop`); its row is kept for audit and its org id is never provisioned again. */
export class TenantDeletedError extends TenantArchivedError {
  constructor(orgId: string, schema: string) {
    super(orgId, schema, 'DELETED');
  }
}

/**
 * The error for a tenant that is registered with a status other than ACTIVE: TenantArchivedError
 * (or TenantDeletedError) for ARCHIVED and DELETED, TenantMovingError for MOVING,
 * TenantUnavailableError for the others.
 */
export function notServedError(orgId: string, schema: string, status: string): TenantAccessError {
  if (status === 'ARCHIVED') return new TenantArchivedError(orgId, schema);
  if (status === 'MOVING') return new TenantMovingError(orgId, schema);
  if (status === 'DELETED') return new TenantDeletedError(orgId, schema);
  return new TenantUnavailableError(orgId, schema, status, reasonForStatus(status));
}

/** The reason for a registry status other than ACTIVE. */
export function reasonForStatus(status: string): TenantUnavailableReason {
  if (status === 'PROVISIONING') return 'provisioning';
  if (status === 'FAILED') return 'failed';
  if (status === 'MOVING') return 'moving';
  return 'inactive';
}

function describeReason(reason: TenantUnavailableReason, status: string): string {
  switch (reason) {
    case 'provisioning':
      return 'it is still being provisioned';
    case 'failed':
      return 'its provisioning failed (provision it again)';
    case 'moving':
      return 'it is being moved to another server (tenant:move); retry shortly';
    case 'schema-missing':
      return 'its schema does not exist in the database (refusing to fall through to public)';
    case 'schema-invalid':
      return 'its registry row names a schema that is not a tenant schema (tid_ + hex)';
    case 'inactive':
      return `its registry status is ${status}, not ACTIVE`;
    case 'server-unknown':
      return `it lives on server ${status}, whose pool this client was not given (createTenantClient's servers)`;
  }
}
