/**
 * An org id or a schema name cannot inject SQL anywhere: not through CLI arguments, not through
 * library calls, not through registry rows edited by hand, and not through a schema whose name
 * is hostile but real. Promise under test: nothing is executed; public.tenants still exists with
 * every row; the run reports the tenant failed or the id refused; identifiers reach SQL quoted.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { folderSource, provisionTenant, quoteIdent, runSchema, tenantTarget, UsageError } from '../../src/index.ts';
import {
  BASE_DIR,
  cliEnv,
  NEXT,
  NEXT_DIR,
  publicTables,
  registryRows,
  setUpTenants,
  snapshot,
  withTk,
} from '../fixtures/rel-support/support.ts';
import { runCli } from '../support/cli.ts';
import { startEngine, type TestEngine } from '../support/engine.ts';

const PAYLOADS = [
  'x"; drop table public.tenants; --',
  "x'; drop table public.tenants; --",
  "tid_a'); delete from public.tenants; --",
  'tid_a"."tenants; drop table public.tenants; --',
  '$$; drop table public.tenants; $$',
] as const;

let engine: TestEngine;
let publicBefore: string[];

beforeAll(async () => {
  engine = await startEngine('rel_injection');
  await setUpTenants(engine, BASE_DIR, ['org_inj_a', 'org_inj_b']);
  publicBefore = await withTk(engine, BASE_DIR, (tk) => publicTables(tk.knex));
});

afterAll(async () => {
  await engine?.stop();
});

/** public.tenants is intact: the table, the two real tenants, and no table added to public. */
async function expectUntouched(extraRows: number): Promise<void> {
  await withTk(engine, BASE_DIR, async (tk) => {
    expect(await publicTables(tk.knex)).toEqual(publicBefore);
    const rows = await registryRows(tk.knex);
    expect(rows.filter((r) => r.orgId.startsWith('org_inj_')).map((r) => r.status)).toEqual(['ACTIVE', 'ACTIVE']);
    expect(rows).toHaveLength(2 + extraRows);
  });
}

describe('SQL injection', () => {
  it('through CLI arguments: refused with exit 2', async () => {
    for (const args of [
      ['provision:tenant', PAYLOADS[0]],
      ['migrate:tenants', '--tenant', PAYLOADS[1]],
    ]) {
      const result = await runCli(args, cliEnv(engine, BASE_DIR));
      expect({ args, code: result.code, error: result.stderr.split('\n').find((l) => l.startsWith('error:')) }).toEqual(
        {
          args,
          code: 2,
          error: expect.stringMatching(/^error: Invalid org id/),
        },
      );
    }
    await expectUntouched(0);
  });

  it('through library calls: provisionTenant and migrateTenants({ orgIds }) refuse every payload', async () => {
    await withTk(engine, BASE_DIR, async (tk) => {
      for (const payload of PAYLOADS) {
        await expect(provisionTenant(payload, { toolkit: tk })).rejects.toBeInstanceOf(UsageError);
        await expect(tk.migrateTenants({ orgIds: [payload] })).rejects.toBeInstanceOf(UsageError);
        await expect(tk.rollbackTenants({ orgIds: [payload] })).rejects.toBeInstanceOf(UsageError);
      }
    });
    await expectUntouched(0);
  });

  it('through registry rows edited by hand: each hostile schema name is refused as not a tenant schema, nothing runs', async () => {
    await withTk(engine, BASE_DIR, (tk) =>
      tk
        .knex('tenants')
        .insert(
          PAYLOADS.map((schema, i) => ({ clerk_org_id: `org_hostile_${i}`, schema_name: schema, status: 'ACTIVE' })),
        ),
    );
    try {
      const migrate = await runCli(['migrate:tenants'], cliEnv(engine, NEXT_DIR));
      expect(migrate.code).toBe(1);
      expect(migrate.stdout).toMatch(/7 tenants: 2 migrated, 0 up to date, 5 failed, 0 skipped/);
      for (const [i, schema] of PAYLOADS.entries()) {
        // Refused as missing (or, stricter, as not a tenant schema name): either way it names the schema and runs nothing.
        expect(migrate.stdout).toContain(`  org_hostile_${i} (${schema}): `);
      }
      const status = await runCli(['migrate:status', '--json'], cliEnv(engine, NEXT_DIR));
      expect(status.code).toBe(0);
      const report = JSON.parse(status.stdout) as { tenants: { orgId: string; state: string; error: string | null }[] };
      const hostile = report.tenants.filter((t) => t.orgId.startsWith('org_hostile_'));
      expect(hostile.map((t) => t.state)).toEqual(PAYLOADS.map(() => 'failed'));
      for (const t of hostile) expect(t.error).toMatch(/not a tenant schema/);
      await expectUntouched(PAYLOADS.length);
      await withTk(engine, NEXT_DIR, async (tk) => {
        const rollback = await tk.rollbackTenants({ lastBatch: true });
        expect(rollback.totals).toMatchObject({ migrated: 2, failed: 5 });
        expect((await tk.migrateTenants()).totals).toMatchObject({ migrated: 2, failed: 5 });
      });
      await expectUntouched(PAYLOADS.length);
    } finally {
      await withTk(engine, BASE_DIR, (tk) =>
        tk.knex('tenants').where('clerk_org_id', 'like', 'org_hostile_%').delete(),
      );
    }
  });

  it('through a schema that really has a hostile name: the runner quotes it, migrations land inside it, and the fan-out refuses the row', async () => {
    // No dot in it: Knex's identifier bindings read a dot as a schema/table separator (safely
    // quoted either way), and the toolkit never derives such a name.
    const hostile = 'x"; drop table tenants cascade; --';
    await withTk(engine, NEXT_DIR, async (tk) => {
      await tk.knex.raw(`create schema ${quoteIdent(hostile)}`);
      try {
        await tk.knex('tenants').insert({ clerk_org_id: 'org_hostile_real', schema_name: hostile, status: 'ACTIVE' });
        const migrations = await folderSource(NEXT_DIR).load();
        const run = await runSchema(tk.knex, tenantTarget(hostile), migrations, { lockTimeoutMs: 5000 }, 'up');
        expect(run.error).toBeNull();
        const state = (await snapshot(tk.knex)).get(hostile)!;
        expect(state.applied).toEqual(NEXT.map((name) => `${name}@1`));
        expect(state.tables).toEqual(['items', 'knex_migrations_tenant', 'knex_migrations_tenant_lock', 'tags']);
        expect(state.itemColumns).toEqual(['id', 'name', 'note']);
        expect(await publicTables(tk.knex)).toEqual(publicBefore);

        const status = await tk.status();
        // Reported by status without being read, and refused by migrate:tenants: the toolkit
        // opens only derived tid_ names.
        const row = status.tenants.find((t) => t.orgId === 'org_hostile_real');
        expect(row).toMatchObject({ schema: hostile, state: 'failed' });
        expect(row?.error).toMatch(/is not a tenant schema/);
        const fanout = await tk.migrateTenants({ orgIds: ['org_hostile_real'] });
        expect(fanout.tenants[0]).toMatchObject({ outcome: 'failed', error: { code: 'E_SCHEMA_NAME' } });
      } finally {
        await tk.knex('tenants').where('clerk_org_id', 'org_hostile_real').delete();
        await tk.knex.raw(`drop schema ${quoteIdent(hostile)} cascade`);
      }
    });
    await expectUntouched(0);
  });
});
