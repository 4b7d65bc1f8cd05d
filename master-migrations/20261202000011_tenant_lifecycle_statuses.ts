import type { Knex } from 'knex';

/**
 * The tenant lifecycle's two last statuses (docs/lifecycle.md): `ARCHIVED` (not served, schema and
 * data kept; `tenant:archive`, `tenant:restore`) and `DELETED` (schema dropped by `tenant:drop`,
 * row kept for audit so that the org id and its schema name are never reused). A new file rather
 * than an edit of `20261121000001_create_tenants.ts`: databases that applied that one keep its
 * recorded checksum. The constraint keeps its name, `tenants_status_check`.
 *
 * `public.tenants` has one row per tenant: checking the new constraint at once is a short scan.
 */
const BEFORE = ['PROVISIONING', 'ACTIVE', 'FAILED'];
const AFTER = [...BEFORE, 'ARCHIVED', 'DELETED'];

export async function up(knex: Knex): Promise<void> {
  await replaceStatusCheck(knex, AFTER);
}

/**
 * Refuses while any tenant is ARCHIVED or DELETED: the old constraint cannot hold them, and
 * turning them into another status would either serve an archived tenant again or forget that an
 * org id was deleted (and let its schema name be reused). Restore them, or decide their rows'
 * fate by hand, first.
 */
export async function down(knex: Knex): Promise<void> {
  const result = await knex.raw(
    "select status, count(*)::int as n from public.tenants where status in ('ARCHIVED', 'DELETED') group by 1 order by 1",
  );
  const rows = result.rows as { status: string; n: number }[];
  if (rows.length > 0) {
    const counts = rows.map((r) => `${r.n} ${r.status}`).join(', ');
    throw new Error(
      `cannot roll back the lifecycle statuses: ${counts} tenant(s) in public.tenants (restore archived tenants with tenant:restore; DELETED rows are the audit of dropped tenants)`,
    );
  }
  await replaceStatusCheck(knex, BEFORE);
}

async function replaceStatusCheck(knex: Knex, values: readonly string[]): Promise<void> {
  await knex.raw('alter table public.tenants drop constraint if exists tenants_status_check');
  // DDL takes no parameters: the values are this file's own constants, written as literals.
  const list = values.map((v) => `'${v}'`).join(', ');
  await knex.raw(`alter table public.tenants add constraint tenants_status_check check (status in (${list}))`);
}
