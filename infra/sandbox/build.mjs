#!/usr/bin/env node
// Builds the sandbox image (`capstan-sandbox:<content hash>`) when the Docker engine does not
// have it yet, and prints its ref. Needs the packages built first (`npm run build`).
//
//   node infra/sandbox/build.mjs           build if missing, print the ref
//   node infra/sandbox/build.mjs --force   rebuild and re-import even if present
import Docker from 'dockerode';
import { createLogger } from '@capstan/kit';
import { ensureSandboxImage } from '@capstan/sandbox';

const args = process.argv.slice(2);
const unknown = args.filter((a) => a !== '--force');
if (unknown.length > 0) {
  console.error(`unknown argument ${JSON.stringify(unknown[0])}\nusage: node infra/sandbox/build.mjs [--force]`);
  process.exit(2);
}

// Progress goes to stderr so stdout carries only the ref.
const log = createLogger('sandbox-image', 'info', process.stderr);
try {
  const image = await ensureSandboxImage(new Docker(), { log, force: args.includes('--force') });
  console.log(image.ref);
} catch (e) {
  console.error(`capstan: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
}
