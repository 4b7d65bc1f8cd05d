import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToolkit, digestOf, folderSource, openToolkit, schemaNameFor, type Toolkit } from '../src/index.ts';
import { FIXTURES, startEngine, type TestEngine } from './support/engine.ts';

// The registry digest lets a run skip up-to-date tenants without opening their schemas; these
// tests pin down when it is written and that a run never trusts a digest that does not match.
const PLAIN = path.join(FIXTURES, 'tenant-plain');
const NAMES = ['001_users.ts', '002_settings.ts'];

let engine: TestEngine;
let tk: Toolkit;

beforeAll(async () => {
  engine = await startEngine('digest');
  tk = await openToolkit(engine.config({ TENANT_MIGRATIONS_DIR: PLAIN, TENANT_EXTENSIONS: '' }));
  await tk.migrateMaster();
});

afterAll(async () => {
  await tk?.close();
  await engine?.stop();
});

async function digestOfOrg(orgId: string): Promise<string | null> {
  const row = await tk.knex('tenants').withSchema('public').where({ clerk_org_id: orgId }).first('migrations_digest');
  return row?.migrations_digest ?? null;
}

describe('registry digest', () => {
  it('is written with the tracking rows by provisioning, rollback and migrate', async () => {
    await tk.provisionTenant('org_digest_a');
    expect(await digestOfOrg('org_digest_a')).toBe(digestOf(NAMES));
    await tk.rollbackTenants({ orgIds: ['org_digest_a'], lastBatch: true });
    expect(await digestOfOrg('org_digest_a')).toBe(digestOf([]));
    await tk.migrateTenants({ orgIds: ['org_digest_a'] });
    expect(await digestOfOrg('org_digest_a')).toBe(digestOf(NAMES));
  });

  it('a tenant without a digest (registered before the toolkit) is read, found up to date, and gets one', async () => {
    await tk.provisionTenant('org_digest_b');
    await tk
      .knex('tenants')
      .withSchema('public')
      .where({ clerk_org_id: 'org_digest_b' })
      .update({ migrations_digest: null });
    const report = await tk.migrateTenants({ orgIds: ['org_digest_b'] });
    expect(report.tenants[0]).toMatchObject({ outcome: 'up-to-date' });
    expect(await digestOfOrg('org_digest_b')).toBe(digestOf(NAMES));
  });

  it('a change to a tracking table made outside the toolkit clears the digest, so the next run reads it', async () => {
    await tk.provisionTenant('org_digest_d');
    const schema = schemaNameFor('org_digest_d');
    await tk.knex.raw('drop table ??.settings', [schema]);
    await tk.knex.withSchema(schema).from('knex_migrations_tenant').where({ name: '002_settings.ts' }).delete();
    expect(await digestOfOrg('org_digest_d')).toBeNull();
    const run = await tk.migrateTenants({ orgIds: ['org_digest_d'] });
    expect(run.tenants[0]).toMatchObject({ outcome: 'migrated', migrations: ['002_settings.ts'] });
  });

  it('a matching digest skips the schema; --verify reads it and finds what the digest hides', async () => {
    await tk.provisionTenant('org_digest_c');
    const schema = schemaNameFor('org_digest_c');
    // Tamper behind the toolkit's back, disguised as the toolkit (its writer mark), so that the
    // trigger keeps the digest: drop the second migration's tracking row and table.
    await tk.knex.transaction(async (trx) => {
      await trx.raw("select set_config('tenant_migrate.writer', 'on', true)");
      await trx.raw('drop table ??.settings', [schema]);
      await trx.withSchema(schema).from('knex_migrations_tenant').where({ name: '002_settings.ts' }).delete();
    });

    const trusting = await tk.migrateTenants({ orgIds: ['org_digest_c'] });
    expect(trusting.tenants[0]).toMatchObject({ outcome: 'up-to-date' });

    const verified = await tk.migrateTenants({ orgIds: ['org_digest_c'], verify: true });
    expect(verified.tenants[0]).toMatchObject({ outcome: 'migrated', migrations: ['002_settings.ts'] });
    expect(await digestOfOrg('org_digest_c')).toBe(digestOf(NAMES));
  });

  it('a new file in the folder changes the folder digest, so every tenant is read and migrated', async () => {
    const more = createToolkit({
      knex: tk.knex,
      config: tk.config,
      sources: {
        tenant: {
          load: async () => [
            ...(await folderSource(PLAIN).load()),
            {
              name: '003_extra.ts',
              file: 'inline',
              checksum: 'e'.repeat(64),
              transaction: true,
              up: (k) => k.raw('create table extra (id int)'),
              down: (k) => k.raw('drop table extra'),
            },
          ],
        },
      },
    });
    const report = await more.migrateTenants();
    expect(report.totals.migrated).toBeGreaterThanOrEqual(3);
    expect(report.totals.failed).toBe(0);
    expect(await digestOfOrg('org_digest_a')).toBe(digestOf([...NAMES, '003_extra.ts']));
  });
});
