import type { Command } from 'commander';
import { registerAdopt } from './adopt.ts';
import { registerDemo } from './demo.ts';
import { registerFleet } from './fleet.ts';
import { registerInit } from './init.ts';
import { registerLifecycle } from './lifecycle.ts';
import { registerLint } from './lint.ts';
import { registerMake } from './make.ts';
import { registerMaster } from './master.ts';
import { registerMigrate } from './migrate.ts';
import { registerMove } from './move.ts';
import { registerProvision } from './provision.ts';
import { registerReport } from './report.ts';
import { registerRoles } from './roles.ts';
import { registerRuns } from './runs.ts';
import { registerStatus } from './status.ts';
import { registerLabel, registerTenants } from './tenants.ts';
import { registerUnlock } from './unlock.ts';

/**
 * Every command of the binary, in help order. A command file imports only commander and light
 * helpers at its top: what a command runs (Knex, the toolkit, the embedded engine) is imported
 * inside its action, so that `--help` and an unrelated command do not load it.
 */
export const COMMANDS: readonly ((program: Command) => void)[] = [
  registerInit,
  registerMaster,
  registerMake,
  registerProvision,
  registerTenants,
  registerLabel,
  registerFleet,
  registerAdopt,
  registerLifecycle,
  registerMove,
  registerRoles,
  registerMigrate,
  registerLint,
  registerStatus,
  registerRuns,
  registerUnlock,
  registerReport,
  registerDemo,
];
