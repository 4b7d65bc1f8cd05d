import type { Knex } from 'knex';

/**
 * Tenants spread over several PostgreSQL servers (docs/servers.md): each registry row names the
 * server its schema lives on, by the name given in `TENANT_SERVERS`; null is the registry's own
 * server (`main`), so every existing tenant stays where it is. Indexed for the placement rule's
 * count per server and for the fan-out's grouping. And the status `MOVING`: a tenant being copied
 * to another server by `tenant:move` (refused by the runtime until the switch, TenantMovingError).
 */
const BEFORE = ['PROVISIONING', 'ACTIVE', 'FAILED', 'ARCHIVED', 'DELETED'];
const AFTER = [...BEFORE, 'MOVING'];

export async function up(knex: Knex): Promise<void> {
  await knex.raw('alter table public.tenants add column if not exists server text');
  await knex.raw('create index if not exists tenants_server_idx on public.tenants (server)');
  await replaceStatusCheck(knex, AFTER);
}

/** Refuses while any tenant lives on another server or is moving: dropping the column would lose where it is. */
export async function down(knex: Knex): Promise<void> {
  const result = await knex.raw(
    `select coalesce(server, 'main') as server, count(*)::int as n from public.tenants
      where server is not null or status = 'MOVING' group by 1 order by 1`,
  );
  const rows = result.rows as { server: string; n: number }[];
  if (rows.length > 0) {
    const where = rows.map((r) => `${r.n} on ${r.server}`).join(', ');
    throw new Error(
      `cannot roll back the tenant servers column: ${where} (move those tenants to the main server, and let moves finish, first)`,
    );
  }
  await replaceStatusCheck(knex, BEFORE);
  await knex.raw('drop index if exists public.tenants_server_idx');
  await knex.raw('alter table public.tenants drop column if exists server');
}

async function replaceStatusCheck(knex: Knex, values: readonly string[]): Promise<void> {
  await knex.raw('alter table public.tenants drop constraint if exists tenants_status_check');
  // DDL takes no parameters: the values are this file's own constants, written as literals.
  const list = values.map((v) => `'${v}'`).join(', ');
  await knex.raw(`alter table public.tenants add constraint tenants_status_check check (status in (${list}))`);
}
