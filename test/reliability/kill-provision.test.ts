/**
 * SIGKILL of `provision:tenant` at each stage it goes through: right after registering (waiting
 * for the tenant's lock), during a slow migration, and right after printing its result. Promise
 * under test: a rerun always ends ACTIVE with a complete schema, and no schema is ever left that
 * no registry row claims (the schema is created in the same transaction as its migrations).
 */
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { schemaNameFor } from '../../src/index.ts';
import {
  advisoryLocks,
  checksumNames,
  cliEnv,
  LOCK_NAMESPACE,
  NEXT,
  NEXT_DIR,
  registryRows,
  session,
  snapshot,
  versionOf,
  waitFor,
  watch,
  withTk,
} from '../fixtures/rel-support/support.ts';
import { runCli, startCli } from '../support/cli.ts';
import { startEngine, type TestEngine } from '../support/engine.ts';

let engine: TestEngine;

beforeAll(async () => {
  engine = await startEngine('rel_kill_provision');
  await withTk(engine, NEXT_DIR, async (tk) => {
    expect((await tk.migrateMaster()).error).toBeNull();
  });
});

afterAll(async () => {
  await engine?.stop();
});

/** After a kill: the org is registered PROVISIONING, its schema does not exist, and nothing is orphaned. */
async function expectRegisteredWithoutSchema(orgId: string): Promise<void> {
  const schema = schemaNameFor(orgId);
  await withTk(engine, NEXT_DIR, async (tk) => {
    const row = (await registryRows(tk.knex)).find((r) => r.orgId === orgId);
    expect(row).toMatchObject({ schema, status: 'PROVISIONING' });
    expect((await snapshot(tk.knex)).has(schema)).toBe(false);
    const status = await tk.status();
    expect(status.orphans).toEqual([]);
    expect(status.tenants.find((t) => t.orgId === orgId)).toMatchObject({
      state: 'not-active',
      status: 'PROVISIONING',
    });
  });
}

/** A rerun of the CLI ends ACTIVE with every migration applied once, in one batch; still no orphan. */
async function expectRerunCompletes(orgId: string): Promise<void> {
  const rerun = await runCli(['provision:tenant', orgId], cliEnv(engine, NEXT_DIR));
  expect(rerun.stderr).not.toMatch(/error/i);
  expect(rerun.code).toBe(0);
  expect(rerun.stdout).toContain(`Provisioned ${orgId} → ${schemaNameFor(orgId)} (3 migrations`);
  await expectActiveAndComplete(orgId);
}

async function expectActiveAndComplete(orgId: string): Promise<void> {
  const schema = schemaNameFor(orgId);
  await withTk(engine, NEXT_DIR, async (tk) => {
    expect((await registryRows(tk.knex)).find((r) => r.orgId === orgId)).toMatchObject({
      schema,
      status: 'ACTIVE',
      error: null,
    });
    const state = (await snapshot(tk.knex)).get(schema)!;
    expect(versionOf(state)).toBe('new');
    expect(state.applied).toEqual(NEXT.map((name) => `${name}@1`));
    expect(await checksumNames(tk.knex)).toEqual([...NEXT]);
    const status = await tk.status();
    expect(status.orphans).toEqual([]);
    expect(status.tenants.find((t) => t.orgId === orgId)?.state).toBe('up-to-date');
  });
}

describe('SIGKILL of provision:tenant', () => {
  it('right after registering, while it waits for the tenant lock: the rerun provisions it', async () => {
    const orgId = 'org_killed_registered';
    const schema = schemaNameFor(orgId);
    if (!engine.multiSession) {
      // Holding the tenant's lock needs a second session, which PGlite does not have. What a kill
      // at this point leaves is the committed registration alone (the schema transaction has not
      // started): that state, written as registerTenant writes it, must be resumable.
      await withTk(engine, NEXT_DIR, (tk) =>
        tk.knex('tenants').insert({ clerk_org_id: orgId, schema_name: schema, status: 'PROVISIONING' }),
      );
    } else {
      const holder = await session(engine);
      try {
        await holder.query('select pg_advisory_lock($1, hashtext($2))', [LOCK_NAMESPACE, schema]);
        const run = watch(startCli(['provision:tenant', orgId], cliEnv(engine, NEXT_DIR)));
        await waitFor('the provisioner to register and wait for the tenant lock', async () => {
          const row = await holder.query('select status from public.tenants where clerk_org_id = $1', [orgId]);
          return row.rowCount === 1 && (await advisoryLocks(holder)).some((l) => !l.granted);
        });
        expect((await run.kill()).signal).toBe('SIGKILL');
        await expectRegisteredWithoutSchema(orgId);
      } finally {
        // The killed client's backend gets the lock, finds its client gone and rolls back.
        await holder.query('select pg_advisory_unlock($1, hashtext($2))', [LOCK_NAMESPACE, schema]);
        await waitFor(
          'the killed provisioner to release the tenant lock',
          async () => (await advisoryLocks(holder)).length === 0,
        );
        await holder.end();
      }
    }
    await expectRegisteredWithoutSchema(orgId);
    await expectRerunCompletes(orgId);
  });

  it('during a slow migration: the schema and its tables vanish with the transaction, the rerun provisions it', async () => {
    const orgId = 'org_killed_migrating';
    const marker = path.join(mkdtempSync(path.join(os.tmpdir(), 'rel-marker-')), 'hang');
    // 002_notes.ts writes the marker, then sleeps 2 s inside the provisioning transaction (after
    // creating the schema and applying 001): on a server the killed client's backend ends with it.
    const run = watch(
      startCli(['provision:tenant', orgId], cliEnv(engine, NEXT_DIR, { REL_HANG_MARKER: marker, REL_HANG_MS: '2000' })),
    );
    await waitFor('the provisioner to reach 002_notes.ts', () => existsSync(marker));
    expect(readFileSync(marker, 'utf8')).toBe(schemaNameFor(orgId));
    expect((await run.kill()).signal).toBe('SIGKILL');
    await expectRegisteredWithoutSchema(orgId);
    await expectRerunCompletes(orgId);
  });

  it('right after it printed its result: the tenant is ACTIVE and complete, the rerun has nothing to do', async () => {
    const orgId = 'org_killed_done';
    const run = watch(startCli(['provision:tenant', orgId], cliEnv(engine, NEXT_DIR)));
    await run.lines(/^Provisioned org_killed_done/);
    await run.kill();
    await expectActiveAndComplete(orgId);
    const rerun = await runCli(['provision:tenant', orgId], cliEnv(engine, NEXT_DIR));
    expect(rerun.code).toBe(0);
    expect(rerun.stdout).toContain(`${orgId} is already ACTIVE → ${schemaNameFor(orgId)} (nothing to do)`);
    await expectActiveAndComplete(orgId);
  });
});
