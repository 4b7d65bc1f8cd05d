/**
 * The one place a PostgreSQL identifier is escaped by hand. Everything else goes
 * through Knex's identifier bindings (`??`, `withSchema`). Used for values that are
 * lists of identifiers, such as a `search_path` passed to `set_config` as a bound value.
 */
export function quoteIdent(name: string): string {
  if (name.includes('\u0000')) throw new Error('identifier contains a NUL byte');
  return `"${name.replace(/"/g, '""')}"`;
}

/** The search_path value that puts a tenant schema first and `public` after it. */
export function tenantSearchPath(schema: string): string {
  return `${quoteIdent(schema)}, public`;
}
