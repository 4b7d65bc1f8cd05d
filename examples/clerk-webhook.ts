/**
 * A ready-to-copy Clerk integration on a plain `node:http` server:
 *
 * - `POST /webhooks/clerk`: Clerk's `organization.created` and `organization.deleted` webhooks,
 *   their signature verified by Clerk's SDK: creation provisions the organisation's schema with
 *   `provisionTenant(orgId)`, deletion archives it (`toolkit.archiveTenant(orgId)`: no longer
 *   served, data kept until an operator runs `tenant:drop`; see docs/lifecycle.md).
 * - `GET /api/settings`: a tenant-scoped request through `withTenant`, the org id taken from the
 *   signed-in user's Clerk session; unknown tenants answer 404, archived ones 410, unavailable ones 503.
 *
 * Run it (Clerk Dashboard → Webhooks → add the endpoint, subscribe to `organization.created` and
 * `organization.deleted`, copy its signing secret):
 *
 *   CLERK_WEBHOOK_SIGNING_SECRET=whsec_… CLERK_SECRET_KEY=sk_… CLERK_PUBLISHABLE_KEY=pk_… \
 *   DATABASE_URL=postgres://… pnpm exec tsx examples/clerk-webhook.ts
 *
 * In your application, import from 'tenant-migrate' instead of '../src/index.ts'.
 */
import http from 'node:http';
import { pathToFileURL } from 'node:url';
import { createClerkClient } from '@clerk/backend';
import { verifyWebhook, type WebhookEvent } from '@clerk/backend/webhooks';
import {
  configFromEnvironment,
  createTenantClient,
  folderSource,
  messageOf,
  openToolkit,
  provisionTenant,
  TenantAccessError,
  type TenantClient,
  type Toolkit,
  ToolkitError,
} from '../src/index.ts';

export type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => Promise<void>;

/** Webhook payloads are small; refuse anything larger before buffering it. */
const MAX_BODY_BYTES = 1024 * 1024;

class BodyTooLargeError extends Error {}

/**
 * Clerk's SDK verifies a Fetch API `Request`; the signature covers the raw body byte for byte,
 * so the body is passed on untouched (never parsed and re-serialised first).
 */
export async function toFetchRequest(req: http.IncomingMessage): Promise<Request> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new BodyTooLargeError();
    chunks.push(chunk as Buffer);
  }
  const headers = new Headers();
  for (const [name, value] of Object.entries(req.headers)) {
    if (Array.isArray(value)) for (const v of value) headers.append(name, v);
    else if (value !== undefined) headers.set(name, value);
  }
  const method = req.method ?? 'GET';
  const body = method === 'GET' || method === 'HEAD' ? undefined : Buffer.concat(chunks);
  return new Request(`http://${req.headers.host ?? 'localhost'}${req.url ?? '/'}`, {
    method,
    headers,
    ...(body ? { body } : {}),
  });
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

/**
 * `POST /webhooks/clerk`. Answers 400 to a request Clerk did not sign, 200 once the schema is
 * ACTIVE (or for events it does not handle), and 500 when provisioning failed: Clerk's
 * webhooks (Svix) then retry with backoff, and provisioning is idempotent and resumes. On
 * `organization.deleted` it archives the tenant and answers 200 (also on a redelivery, and for
 * an org that was never provisioned: there is nothing to keep from serving); `tenants`, when
 * given, forgets the org at once in this process (other processes refuse it anyway: the
 * scoping statement re-reads the status in every transaction).
 */
export function clerkWebhookHandler(options: {
  toolkit: Toolkit;
  signingSecret: string;
  tenants?: TenantClient;
  log?: (line: string) => void;
}): Handler {
  const log = options.log ?? ((line: string) => console.error(line));
  return async (req, res) => {
    let event: WebhookEvent;
    try {
      event = await verifyWebhook(await toFetchRequest(req), { signingSecret: options.signingSecret });
    } catch (error) {
      if (error instanceof BodyTooLargeError) return send(res, 413, { error: 'payload too large' });
      return send(res, 400, { error: 'webhook verification failed' });
    }
    if (event.type === 'organization.deleted') return archiveOnDelete({ ...options, log }, event.data.id, res);
    if (event.type !== 'organization.created') return send(res, 200, { ignored: event.type });

    const orgId = event.data.id;
    try {
      const report = await provisionTenant(orgId, { toolkit: options.toolkit });
      if (report.outcome === 'failed') {
        log(`provisioning ${orgId} (${report.schema}) failed: ${report.error?.message ?? 'unknown error'}`);
        return send(res, 500, { error: 'provisioning failed', orgId });
      }
      return send(res, 200, { orgId, schema: report.schema, outcome: report.outcome });
    } catch (error) {
      // Bad input (exit code 2) will not get better on retry; anything else (database down) may.
      const permanent = error instanceof ToolkitError && error.exitCode === 2;
      log(`provisioning ${orgId} failed: ${messageOf(error)}`);
      return send(res, permanent ? 400 : 500, { error: messageOf(error) });
    }
  };
}

/** `organization.deleted`: archive, never drop (an operator decides that, with a dump). */
async function archiveOnDelete(
  options: { toolkit: Toolkit; tenants?: TenantClient; log: (line: string) => void },
  orgId: string | undefined,
  res: http.ServerResponse,
): Promise<void> {
  if (orgId === undefined) return send(res, 200, { ignored: 'organization.deleted without an id' });
  try {
    const report = await options.toolkit.archiveTenant(orgId);
    options.tenants?.invalidate(orgId);
    return send(res, 200, { orgId, schema: report.schema, outcome: report.outcome });
  } catch (error) {
    // Never provisioned (or a malformed id), or dropped already: nothing is served, nothing to retry.
    if (error instanceof ToolkitError && (error.exitCode === 2 || error.code === 'E_TENANT_DELETED')) {
      return send(res, 200, { orgId, outcome: 'nothing-to-archive', reason: messageOf(error) });
    }
    options.log(`archiving ${orgId} failed: ${messageOf(error)}`);
    return send(res, 500, { error: messageOf(error) });
  }
}

/** Finds the org of a request; null when it has no signed-in session with an active organisation. */
export type OrgOfRequest = (request: Request) => Promise<string | null>;

/** The org id from the request's Clerk session token, verified by Clerk's SDK (never trust a header for it). */
export function clerkSessionOrg(options: {
  secretKey: string;
  publishableKey: string;
  authorizedParties?: string[];
}): OrgOfRequest {
  const clerk = createClerkClient({ secretKey: options.secretKey, publishableKey: options.publishableKey });
  return async (request) => {
    const state = await clerk.authenticateRequest(
      request,
      options.authorizedParties ? { authorizedParties: options.authorizedParties } : {},
    );
    if (!state.isAuthenticated) return null;
    return state.toAuth().orgId ?? null;
  };
}

/**
 * `GET /api/settings`: the organisation's settings, read from its own schema. `withTenant`
 * scopes the transaction to that schema; its typed errors map straight to HTTP statuses.
 */
export function settingsHandler(options: { tenants: TenantClient; orgOf: OrgOfRequest }): Handler {
  return async (req, res) => {
    const orgId = await options.orgOf(await toFetchRequest(req));
    if (orgId === null) return send(res, 401, { error: 'sign in and choose an organisation' });
    try {
      const settings = await options.tenants.withTenant(orgId, (trx) =>
        trx('org_settings').select('key', 'value').orderBy('key'),
      );
      return send(res, 200, { settings });
    } catch (error) {
      if (error instanceof TenantAccessError) return send(res, error.httpStatus, { error: error.message });
      throw error;
    }
  };
}

/** The server: one toolkit and one tenant client per process, over one shared pool. */
export async function main(env: NodeJS.ProcessEnv = process.env): Promise<http.Server> {
  const config = configFromEnvironment();
  const toolkit = await openToolkit(config);
  const tenants = createTenantClient({
    knex: toolkit.knex,
    // Tenants deployed before the newest migrations catch up on their first request.
    migrations: folderSource(config.tenantMigrationsDir),
    onLazyMigrationError: (e) => console.error(`lazy migration of ${e.orgId} failed: ${e.error?.message}`),
  });
  const webhook = clerkWebhookHandler({
    toolkit,
    tenants,
    signingSecret: required(env, 'CLERK_WEBHOOK_SIGNING_SECRET'),
  });
  const settings = settingsHandler({
    tenants,
    orgOf: clerkSessionOrg({
      secretKey: required(env, 'CLERK_SECRET_KEY'),
      publishableKey: required(env, 'CLERK_PUBLISHABLE_KEY'),
    }),
  });
  const server = http.createServer((req, res) => {
    const route =
      req.method === 'POST' && req.url === '/webhooks/clerk'
        ? webhook
        : req.method === 'GET' && req.url === '/api/settings'
          ? settings
          : undefined;
    if (!route) return send(res, 404, { error: 'not found' });
    route(req, res).catch((error: unknown) => {
      console.error(error);
      if (!res.headersSent) send(res, 500, { error: 'internal error' });
    });
  });
  server.on('close', () => void toolkit.close());
  const port = Number(env.PORT ?? 3000);
  server.listen(port, () => console.log(`listening on :${port}`));
  return server;
}

function required(env: NodeJS.ProcessEnv, name: string): string {
  const value = env[name];
  if (!value) throw new Error(`set ${name}`);
  return value;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((error: unknown) => {
    console.error(messageOf(error));
    process.exit(1);
  });
}
