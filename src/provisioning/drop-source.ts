import type { Knex } from 'knex';
import { MAIN_SERVER } from '../config/config.ts';
import { lockForTransaction } from '../db/locks.ts';
import { type Servers, UnknownServerError } from '../db/servers.ts';
import { RegistryMissingError, UsageError } from '../errors.ts';
import { probeCapabilities } from '../migrations/books.ts';
import { isTenantSchemaName, validateOrgId } from '../tenants/naming.ts';
import { findTenantByOrgId, serversColumnMissing, type Tenant } from '../tenants/registry.ts';
import { dropTenantRole, tenantRoleName } from '../tenants/roles.ts';

/**
 * `tenant:drop-source`: the copy a `tenant:move` kept on the server the tenant left, dropped
 * (schema and tenant role) under the tenant's lock on that server. Refused when the registry says
 * the tenant lives there, or while it is MOVING (a move running or crashed: finish it first).
 */

/** What `tenant:drop-source` did. */
export interface DropSourceReport {
  readonly orgId: string;
  readonly schema: string;
  readonly server: string;
  /** `dropped`, or `absent`: the server has no such schema (dropped before). */
  readonly outcome: 'dropped' | 'absent';
  readonly roleDropped: boolean;
  readonly durationMs: number;
}

/** Drops the kept copy of `orgId`'s schema on `server`, a server it no longer lives on. */
export async function dropTenantSource(
  ctx: { readonly knex: Knex; readonly servers: Servers | undefined },
  orgId: string,
  options: { readonly server: string },
): Promise<DropSourceReport> {
  const started = Date.now();
  validateOrgId(orgId);
  const servers = ctx.servers;
  if (!servers) {
    throw new UsageError('tenant:drop-source needs several servers: no TENANT_SERVERS are configured', {
      code: 'E_NO_SERVERS',
    });
  }
  if (!servers.has(options.server)) throw new UnknownServerError(options.server, servers.names);
  const capabilities = await probeCapabilities(ctx.knex);
  if (!capabilities.registry) throw new RegistryMissingError();
  if (!capabilities.servers) throw serversColumnMissing();
  const registered = await current(ctx.knex, orgId, options.server);
  if (!isTenantSchemaName(registered.schema)) {
    throw new UsageError(`${orgId}'s registry row names schema ${registered.schema}, not a tenant schema`, {
      code: 'E_SCHEMA_NAME',
    });
  }
  const schema = registered.schema;
  return servers.knexFor(options.server).transaction(async (trx) => {
    await lockForTransaction(trx, schema);
    // Read again under the lock: a move back to this server may have finished meanwhile.
    await current(ctx.knex, orgId, options.server);
    const found = await trx.raw('select exists (select 1 from pg_namespace where nspname = ?) as present', [schema]);
    const role = await trx.raw('select 1 from pg_catalog.pg_roles where rolname = ?', [tenantRoleName(schema)]);
    const report = (outcome: DropSourceReport['outcome'], roleDropped: boolean): DropSourceReport => ({
      orgId,
      schema,
      server: options.server,
      outcome,
      roleDropped,
      durationMs: Date.now() - started,
    });
    if (!found.rows[0]?.present) return report('absent', false);
    await trx.raw('drop schema ?? cascade', [schema]);
    await dropTenantRole(trx, schema);
    return report('dropped', role.rows.length > 0);
  });
}

/** The registry row, refused when the tenant lives on `server` or is MOVING. */
async function current(knex: Knex, orgId: string, server: string): Promise<Tenant> {
  const tenant = await findTenantByOrgId(knex, orgId, { withServer: true });
  if (!tenant) {
    throw new UsageError(`Not registered: ${orgId}`, { code: 'E_UNKNOWN_TENANT' });
  }
  const home = tenant.server ?? MAIN_SERVER;
  if (home === server) {
    throw new UsageError(
      `${orgId} (${tenant.schema}) lives on server ${server} (the registry says so): refusing to drop its schema`,
      { code: 'E_TENANT_LIVES_THERE' },
    );
  }
  if (tenant.status === 'MOVING') {
    throw new UsageError(
      `${orgId} (${tenant.schema}) is MOVING: let the move finish (or run \`pnpm tenant:move\` again after a crash) first`,
      { code: 'E_TENANT_STATUS' },
    );
  }
  return tenant;
}
