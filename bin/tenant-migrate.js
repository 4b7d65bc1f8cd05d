#!/usr/bin/env node
// The `tenant-migrate` binary. In the installed package it runs the built CLI (dist/bin). In the
// toolkit's own repository (where src/ exists) it runs the sources through tsx whenever the build
// is missing or older than them, so that `pnpm migrate:tenants` never runs stale code.
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const built = path.join(root, 'dist', 'bin', 'main.js');
const sources = path.join(root, 'src');

function newestSource(dir) {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const file = path.join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestSource(file) : statSync(file).mtimeMs);
  }
  return newest;
}

const useBuild = existsSync(built) && (!existsSync(sources) || statSync(built).mtimeMs >= newestSource(sources));
if (!useBuild) await import('tsx');
await import(pathToFileURL(useBuild ? built : path.join(sources, 'cli', 'main.ts')).href);
