import { readFileSync } from 'node:fs';
import type { Knex } from 'knex';
import { sqlState } from '../db/pg-errors.ts';
import { MigrationSourceError, UsageError } from '../errors.ts';
import { probeCapabilities } from '../migrations/books.ts';
import { recordChecksums, verifyChecksums } from '../migrations/checksums.ts';
import { digestOf } from '../migrations/plan.ts';
import { type SchemaState, scanSchemas } from '../migrations/prescan.ts';
import type { Migration, MigrationSource } from '../migrations/source.ts';
import { TENANT_TRACKING_TABLE } from '../migrations/targets.ts';
import { addFleetCompanions } from '../migrations/tracking.ts';
import { candidateSchemaNames, isTenantSchemaName, schemaNameFor, validateOrgId } from './naming.ts';

/**
 * Adoption: registering tenant schemas that seed-style scripts made (`tid_<md5 prefix>` with a
 * Knex tracking table) but the registry does not know. The org id cannot be read back from the
 * hash, so the caller names the org ids (a mapping file, or a read-only query); each one's schema
 * is derived by hashing it. Everything is read first and decided by one pure function
 * (`planAdoption`); a real run then writes every registry row and checksum in one transaction.
 *
 * It reads tracking tables with the fan-out's prescan and records checksums with the run's own
 * helpers, so it sits above `migrations/` although it lives beside the registry (nothing in
 * `migrations/` imports it: no cycle).
 */

/** Where the org ids come from: a list (from a mapping file), or a query run read-only. */
export type OrgIdSource =
  | { readonly kind: 'list'; readonly orgIds: readonly string[] }
  | { readonly kind: 'query'; readonly sql: string };

/** `dryRun`: report what would be adopted, write nothing. */
export interface AdoptOptions {
  /** Read and decide only: nothing is written (reads run in a read-only transaction). */
  readonly dryRun?: boolean;
}

/** A schema registered by `tenants:adopt`, with the migrations its tracking table holds. */
export interface AdoptedTenant {
  readonly orgId: string;
  readonly schema: string;
  /** Rows in the schema's tracking table. */
  readonly applied: number;
  /** `digestOf` the applied names, recorded as the registry's `migrations_digest`. */
  readonly digest: string;
  /** Applied names with no file in the migration folder (no checksum; `migrate:tenants` will refuse this tenant). */
  readonly notInFolder: readonly string[];
}

/** Why `tenants:adopt` left a schema alone. */
export type RefusalReason = 'schema-registered' | 'schema-claimed' | 'not-tracked';

/** A schema `tenants:adopt` left alone, and why. */
export interface RefusedTenant {
  readonly orgId: string;
  readonly schema: string;
  readonly reason: RefusalReason;
  /** The org id the schema belongs to (`schema-registered`, `schema-claimed`). */
  readonly otherOrgId?: string;
}

/** What one adopt run did (or, dry, would do). A plain value; the CLI renders it. */
export interface AdoptReport {
  readonly dryRun: boolean;
  /** Org ids given (after removing repeats). */
  readonly given: number;
  readonly adopted: readonly AdoptedTenant[];
  /** Org ids already in the registry (left as they are): the schema the registry holds. */
  readonly alreadyRegistered: readonly { readonly orgId: string; readonly schema: string }[];
  readonly refused: readonly RefusedTenant[];
  /** Org ids whose derived schema does not exist (not registered). */
  readonly notFound: readonly { readonly orgId: string; readonly schema: string }[];
  /** `tid_` schemas that no given org id derives to and the registry does not hold (untouched). */
  readonly unmatched: readonly string[];
  readonly checksums: {
    /** Files whose checksum this run recorded (would record, dry). */
    readonly recorded: number;
    /** Applied files whose recorded checksum differs from the file on disk: not overwritten. */
    readonly conflicts: readonly string[];
  };
  /** False when `public.tenants` has no `migrations_digest` column (rows are adopted without one). */
  readonly digestKept: boolean;
}

/** A registry row as adoption needs it. */
export interface RegistryEntry {
  readonly orgId: string;
  readonly schema: string;
}

/** What the database holds, read before anything is decided. */
export interface AdoptionFacts {
  /** Every `tid_` schema in the database. */
  readonly schemas: ReadonlySet<string>;
  /** Registry rows of the given org ids and of the `tid_` schemas. */
  readonly registry: readonly RegistryEntry[];
  /** Tracking-table state of the schemas the org ids derive to. */
  readonly states: ReadonlyMap<string, SchemaState>;
}

export type AdoptionPlan = Omit<AdoptReport, 'dryRun' | 'checksums' | 'digestKept'>;

/**
 * The derived schema of an org: the first of its candidate names (10 hex digits, then longer
 * ones that a hash collision would have used) that exists, else the 10-digit name.
 */
export function derivedSchema(orgId: string, schemas: ReadonlySet<string>): string {
  return candidateSchemaNames(orgId).find((name) => schemas.has(name)) ?? schemaNameFor(orgId);
}

/**
 * Decides each org id's fate from the facts, in order: already registered (a no-op), derived
 * schema missing, schema registered to (or, earlier in this list, claimed by) another org,
 * no tracking table (not a Knex-migrated tenant: refused), else adopted. Pure.
 */
export function planAdoption(
  orgIds: readonly string[],
  facts: AdoptionFacts,
  local: readonly Migration[],
): AdoptionPlan {
  const byOrg = new Map(facts.registry.map((row) => [row.orgId, row.schema]));
  const bySchema = new Map(facts.registry.map((row) => [row.schema, row.orgId]));
  const localNames = new Set(local.map((m) => m.name));
  const claimed = new Map<string, string>();
  const plan = { adopted: [] as AdoptedTenant[], alreadyRegistered: [] as RegistryEntry[] };
  const refused: RefusedTenant[] = [];
  const notFound: RegistryEntry[] = [];
  for (const orgId of orgIds) {
    const registered = byOrg.get(orgId);
    const schema = registered ?? derivedSchema(orgId, facts.schemas);
    claimed.set(schema, claimed.get(schema) ?? orgId);
    const owner = bySchema.get(schema) ?? claimed.get(schema);
    const state = facts.states.get(schema);
    if (registered !== undefined) plan.alreadyRegistered.push({ orgId, schema });
    else if (!facts.schemas.has(schema)) notFound.push({ orgId, schema });
    else if (owner !== undefined && owner !== orgId) {
      const reason = bySchema.has(schema) ? 'schema-registered' : 'schema-claimed';
      refused.push({ orgId, schema, reason, otherOrgId: owner });
    } else if (!state?.tracked) refused.push({ orgId, schema, reason: 'not-tracked' });
    else {
      const names = state.applied.map((row) => row.name);
      plan.adopted.push({
        orgId,
        schema,
        applied: names.length,
        digest: digestOf(names),
        notInFolder: names.filter((name) => !localNames.has(name)),
      });
    }
  }
  const unmatched = [...facts.schemas].filter((s) => !claimed.has(s) && !bySchema.has(s)).sort();
  return { given: orgIds.length, ...plan, refused, notFound, unmatched };
}

/**
 * Registers the given orgs' existing `tid_` schemas as ACTIVE tenants with their registry digest,
 * and records the checksums of the applied files that the folder has (a checksum recorded
 * differently is reported, never overwritten). Adopting twice is a no-op. All registry and
 * checksum writes happen in one transaction (`insert … on conflict do nothing`), so a concurrent
 * adopt or provisioning cannot make two rows for one schema. Before it, the schemas to adopt get
 * Knex's lock table and the tracking trigger (idempotent, in chunks), so that the recorded
 * digest is cleared by any later change plain Knex makes. A plain Knex run that commits while
 * adopt reads and registers can still leave a stale digest: adopt when no deploy script runs. Throws a UsageError (exit 2) for bad input: invalid org
 * ids, a query that is not one SELECT, no registry.
 */
export async function adoptTenants(
  knex: Knex,
  source: MigrationSource,
  orgIdSource: OrgIdSource,
  options: AdoptOptions = {},
): Promise<AdoptReport> {
  const orgIds = await resolveOrgIds(knex, orgIdSource);
  const capabilities = await probeCapabilities(knex);
  if (!capabilities.registry) {
    throw new UsageError(
      'The tenant registry public.tenants does not exist: run `pnpm migrate:master` first, then adopt',
      { code: 'E_REGISTRY_MISSING' },
    );
  }
  const local = await source.load();
  const dryRun = options.dryRun ?? false;
  if (!dryRun) {
    // Before the rows are read: from here on a plain Knex change to these tracking tables clears
    // the digest we are about to record (the trigger is a no-op while a schema is unregistered).
    const plan = planAdoption(orgIds, await readFacts(knex, orgIds), local);
    await addFleetCompanions(
      knex,
      plan.adopted.map((a) => a.schema),
      TENANT_TRACKING_TABLE,
      { trigger: capabilities.trackingTrigger },
    );
  }
  return knex.transaction(
    async (trx) => {
      const facts = await readFacts(trx, orgIds);
      const plan = planAdoption(orgIds, facts, local);
      const adopted = dryRun ? plan.adopted : await register(trx, plan, capabilities.digest);
      // Registered by a concurrent adopt or provisioning between our read and our insert: decided again.
      const lost = plan.adopted.filter((a) => !adopted.includes(a)).map((a) => a.orgId);
      const again =
        lost.length === 0
          ? undefined
          : planAdoption(lost, { ...facts, registry: await readRegistry(trx, lost, facts.schemas) }, local);
      const applied = new Set(adopted.flatMap((a) => facts.states.get(a.schema)?.applied.map((row) => row.name) ?? []));
      const checksums = await checksumsOf(trx, applied, local, dryRun);
      return {
        ...plan,
        dryRun,
        adopted,
        alreadyRegistered: [...plan.alreadyRegistered, ...(again?.alreadyRegistered ?? [])],
        refused: [...plan.refused, ...(again?.refused ?? [])],
        checksums,
        digestKept: capabilities.digest,
      };
    },
    { readOnly: dryRun },
  );
}

/** Every `tid_` schema, the registry rows that concern them or the org ids, and the derived schemas' tracking rows. */
async function readFacts(trx: Knex | Knex.Transaction, orgIds: readonly string[]): Promise<AdoptionFacts> {
  const names = await trx.raw("select nspname from pg_namespace where nspname like 'tid\\_%' order by 1");
  const schemas = new Set<string>(
    (names.rows as { nspname: string }[]).map((r) => r.nspname).filter(isTenantSchemaName),
  );
  const registry = await readRegistry(trx, orgIds, schemas);
  const derived = [...new Set(orgIds.map((orgId) => derivedSchema(orgId, schemas)))].filter((s) => schemas.has(s));
  const states = new Map<string, SchemaState>();
  for await (const chunk of scanSchemas(trx, derived, TENANT_TRACKING_TABLE)) {
    for (const [schema, state] of chunk) states.set(schema, state);
  }
  return { schemas, registry, states };
}

/** The registry rows of these org ids or these schemas. */
async function readRegistry(
  trx: Knex | Knex.Transaction,
  orgIds: readonly string[],
  schemas: ReadonlySet<string>,
): Promise<RegistryEntry[]> {
  const rows = await trx.raw(
    `select clerk_org_id as "orgId", schema_name as "schema" from public.tenants
      where clerk_org_id = any(?::text[]) or schema_name = any(?::text[])`,
    [[...orgIds], [...schemas]],
  );
  return rows.rows as RegistryEntry[];
}

/**
 * Inserts the adopted rows in one statement; returns those this run registered. Rows go in org
 * id order, so two adopt runs at once wait for each other instead of deadlocking on the keys.
 */
async function register(trx: Knex.Transaction, plan: AdoptionPlan, keepDigest: boolean): Promise<AdoptedTenant[]> {
  if (plan.adopted.length === 0) return [];
  const columns = keepDigest
    ? 'clerk_org_id, schema_name, status, migrations_digest'
    : 'clerk_org_id, schema_name, status';
  const digest = keepDigest ? ', d' : '';
  const result = await trx.raw(
    `insert into public.tenants (${columns})
     select o, s, 'ACTIVE'${digest} from unnest(?::text[], ?::text[], ?::text[]) as t(o, s, d)
     order by o collate "C"
     on conflict do nothing
     returning clerk_org_id`,
    [plan.adopted.map((a) => a.orgId), plan.adopted.map((a) => a.schema), plan.adopted.map((a) => a.digest)],
  );
  const inserted = new Set((result.rows as { clerk_org_id: string }[]).map((r) => r.clerk_org_id));
  return plan.adopted.filter((a) => inserted.has(a.orgId));
}

/**
 * Checksums of the files the adopted tenants have applied (those the folder has): conflicts are
 * found first (one query, then one per file only when some file differs) and left as recorded.
 */
async function checksumsOf(
  trx: Knex.Transaction,
  applied: ReadonlySet<string>,
  local: readonly Migration[],
  dryRun: boolean,
): Promise<AdoptReport['checksums']> {
  const files = local.filter((m) => applied.has(m.name));
  const conflicts: string[] = [];
  let recorded: ReadonlySet<string>;
  try {
    recorded = await verifyChecksums(trx, 'tenant', files);
  } catch (error) {
    if (!(error instanceof MigrationSourceError)) throw error;
    // verifyChecksums stops at the first edited file; ask file by file to name them all.
    const known = new Set<string>();
    for (const file of files) {
      try {
        for (const name of await verifyChecksums(trx, 'tenant', [file])) known.add(name);
      } catch (inner) {
        if (!(inner instanceof MigrationSourceError)) throw inner;
        conflicts.push(file.name);
        known.add(file.name);
      }
    }
    recorded = known;
  }
  const toRecord = files.filter((m) => !recorded.has(m.name));
  // recordChecksums opens its own transaction: on ours that is a savepoint, so it commits with the rows.
  if (!dryRun) await recordChecksums(trx, 'tenant', toRecord);
  return { recorded: toRecord.length, conflicts };
}

/** An org id as read, with where it was read (`line 3`, `row 2`) for messages. */
export interface OrgIdEntry {
  readonly value: unknown;
  readonly where: string;
}

/** How a mapping file is read, by its extension: `.json` an array, `.csv` / `.txt` one id a line. */
export function mapFormatOf(file: string): 'json' | 'lines' {
  if (/\.json$/i.test(file)) return 'json';
  if (/\.(csv|txt)$/i.test(file)) return 'lines';
  throw new UsageError(`Map file ${file}: use a .csv or .txt file (one org id a line) or a .json array of org ids`, {
    code: 'E_ADOPT_MAP',
  });
}

// A first line naming the column, as a spreadsheet export writes it.
const HEADER = /^(clerk_)?org(anization)?_?id$/i;

/**
 * Parses a mapping file's text. Lines: one org id a line (the first comma-separated field,
 * trimmed, quotes removed); blank lines, `#` comments and a header line (`org_id`,
 * `clerk_org_id`) are skipped. JSON: an array of org id strings. Pure; throws a UsageError
 * (exit 2) when the text is not of its format.
 */
export function parseOrgMap(text: string, format: 'json' | 'lines', label = 'map file'): OrgIdEntry[] {
  if (format === 'json') {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (error) {
      throw new UsageError(`${label}: not valid JSON (${(error as Error).message})`, { code: 'E_ADOPT_MAP' });
    }
    if (!Array.isArray(parsed))
      throw new UsageError(`${label}: expected a JSON array of org ids`, { code: 'E_ADOPT_MAP' });
    return parsed.map((value, index) => ({ value, where: `item ${index + 1}` }));
  }
  const entries: OrgIdEntry[] = [];
  for (const [index, line] of text
    .replace(/^\uFEFF/, '')
    .split(/\r?\n/)
    .entries()) {
    const value = (line.split(',')[0] ?? '').trim().replace(/^"(.*)"$/, '$1');
    if (value === '' || value.startsWith('#')) continue;
    if (entries.length === 0 && HEADER.test(value)) continue;
    entries.push({ value, where: `line ${index + 1}` });
  }
  return entries;
}

/**
 * Validates every org id at once (`validateOrgId`) and drops repeats, keeping the first. One
 * UsageError names the first few bad entries; an empty list is refused too.
 */
export function checkedOrgIds(entries: readonly OrgIdEntry[], label: string): string[] {
  const problems: string[] = [];
  const ids = new Set<string>();
  for (const { value, where } of entries) {
    try {
      ids.add(validateOrgId(value));
    } catch (error) {
      if (!(error instanceof UsageError)) throw error;
      problems.push(`${where}: ${error.message}`);
    }
  }
  if (problems.length > 0) {
    const more = problems.length > 3 ? ` (and ${problems.length - 3} more)` : '';
    throw new UsageError(`${label}: ${problems.slice(0, 3).join('; ')}${more}`, { code: 'E_ORG_ID' });
  }
  if (ids.size === 0) throw new UsageError(`${label}: no org ids in it`, { code: 'E_ADOPT_MAP' });
  return [...ids];
}

/** Reads and parses a mapping file; a missing or unreadable file is a UsageError naming it. */
export function readOrgMap(file: string): string[] {
  const format = mapFormatOf(file);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as { code?: string }).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a folder' : (error as Error).message;
    throw new UsageError(`Cannot read map file ${file}: ${why}`, { code: 'E_ADOPT_MAP' });
  }
  return checkedOrgIds(parseOrgMap(text, format, `Map file ${file}`), `Map file ${file}`);
}

/** The org ids of the source, validated all at once and without repeats. */
async function resolveOrgIds(knex: Knex, source: OrgIdSource): Promise<string[]> {
  if (source.kind === 'list') {
    return checkedOrgIds(
      source.orgIds.map((value, index) => ({ value, where: `org id ${index + 1}` })),
      'Org ids',
    );
  }
  const values = await queryOrgIds(knex, source.sql);
  return checkedOrgIds(
    values.map((value, index) => ({ value, where: `row ${index + 1}` })),
    '--query',
  );
}

/**
 * Runs the user's query in a read-only transaction (rolled back) and returns its first column.
 * It must be exactly one SELECT (checked with PostgreSQL's own parser): a second statement
 * could otherwise end the transaction and write.
 */
async function queryOrgIds(knex: Knex, sql: string): Promise<unknown[]> {
  const { parse } = await import('libpg-query');
  let statements: { stmt?: Record<string, unknown> }[];
  try {
    statements = ((await parse(sql)) as { stmts?: { stmt?: Record<string, unknown> }[] }).stmts ?? [];
  } catch (error) {
    throw new UsageError(`--query is not valid SQL: ${(error as Error).message}`, { code: 'E_ADOPT_QUERY' });
  }
  if (statements.length !== 1 || !statements[0]?.stmt || !('SelectStmt' in statements[0].stmt)) {
    throw new UsageError('--query must be exactly one SELECT statement (it runs read-only)', { code: 'E_ADOPT_QUERY' });
  }
  // Knex would read each `?` as a binding; send the text as written (see sql-migration.ts).
  const shown = sql.replace(/(\\*)\?/g, (mark, slashes: string) => (slashes.length % 2 === 1 ? mark : `${slashes}\\?`));
  return knex.transaction(
    async (trx) => {
      let result: { rows: Record<string, unknown>[]; fields: { name: string }[] };
      try {
        result = await trx.raw(shown).options({ text: sql });
      } catch (error) {
        if (sqlState(error) === undefined) throw error;
        const message = (error as Error).message;
        const reason = message.includes(' - ') ? message.slice(message.lastIndexOf(' - ') + 3) : message;
        throw new UsageError(`--query failed: ${reason}`, { code: 'E_ADOPT_QUERY', cause: error });
      }
      const column = result.fields[0]?.name;
      if (column === undefined) throw new UsageError('--query returned no columns', { code: 'E_ADOPT_QUERY' });
      return result.rows.map((row) => row[column]);
    },
    { readOnly: true },
  );
}
