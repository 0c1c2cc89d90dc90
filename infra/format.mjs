#!/usr/bin/env node
// `npm run format`: formats the whole tree with Prettier (.prettierrc.json).
//
// Files that did not yet conform when Prettier was adopted are listed in .prettierignore
// between the two PENDING markers, so `npm run format:check` (part of `npm test`) checks
// every other file from the start. This script drops that block first, so after one
// `npm run format` every file is formatted and checked; the block is then gone for good.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const ignoreFile = join(root, '.prettierignore');
const BEGIN = '# PENDING: not yet formatted';
const END = '# END PENDING';

const text = readFileSync(ignoreFile, 'utf8');
const start = text.indexOf(BEGIN);
if (start >= 0) {
  const end = text.indexOf(END, start);
  if (end < 0) throw new Error(`${ignoreFile}: "${BEGIN}" without "${END}"`);
  writeFileSync(ignoreFile, text.slice(0, start) + text.slice(end + END.length).replace(/^\n/, ''));
}
// Prettier is not idempotent on some long member chains (a second pass joins what the first
// broke), so it writes until the tree checks clean.
const prettier = join(root, 'node_modules', '.bin', 'prettier');
for (let pass = 1; ; pass++) {
  execFileSync(prettier, ['--write', '--log-level', 'warn', '.'], { cwd: root, stdio: 'inherit' });
  try {
    execFileSync(prettier, ['--check', '--log-level', 'silent', '.'], { cwd: root, stdio: 'inherit' });
    break;
  } catch (e) {
    if (pass === 3) throw e;
  }
}
