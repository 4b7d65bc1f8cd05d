import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.ts';
import { ConfigError } from '../../src/errors.ts';
import { changedSettings, WATCHED_SETTINGS } from '../../src/runtime/isolation.ts';
import { tenantRoleName } from '../../src/tenants/roles.ts';

const SERVER = { DATABASE_URL: 'postgres://u@127.0.0.1:5432/app' };

describe('TENANT_APP_ROLE', () => {
  it('defaults to the README’s tenant_app and takes a plain role name', () => {
    expect(loadConfig(SERVER).tenantAppRole).toBe('tenant_app');
    expect(loadConfig({ ...SERVER, TENANT_ROLES: 'on', TENANT_APP_ROLE: 'web_app' }).tenantAppRole).toBe('web_app');
  });

  it.each(['public', 'pg_monitor', 'bad-name', 'x"y', 'tid_0123456789_app', 'a'.repeat(64)])('refuses %s', (name) => {
    expect(() => loadConfig({ ...SERVER, TENANT_APP_ROLE: name })).toThrow(ConfigError);
  });
});

describe('tenant roles and session settings', () => {
  it('derives the role from a derived schema name only', () => {
    expect(tenantRoleName('tid_cf4116b064')).toBe('tid_cf4116b064_app');
    expect(() => tenantRoleName('public')).toThrow();
  });

  it('names the settings that differ between two signatures', () => {
    const before = ['app', '"$user", public', '0', ...WATCHED_SETTINGS.slice(3).map(() => 'x')].join('\u001f');
    const after = ['tid_a_app', 'public', '0', ...WATCHED_SETTINGS.slice(3).map(() => 'x')].join('\u001f');
    expect(changedSettings(before, before)).toEqual([]);
    expect(changedSettings(before, after)).toEqual([
      { setting: 'role', before: 'app', after: 'tid_a_app' },
      { setting: 'search_path', before: '"$user", public', after: 'public' },
    ]);
  });
});
