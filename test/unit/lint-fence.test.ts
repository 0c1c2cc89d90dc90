/**
 * The actors/ fence holds: infra/eslint.config.mjs reports every way of importing
 * something other than `xstate` / `@capstan/schemas`, or of reading a clock, a random
 * source, timers or the process, in actors/src — and lets a clean file through.
 *
 * Snippets are linted as virtual files (`lintText` with a `filePath`), so nothing is
 * written into the source tree. A virtual file is not in any tsconfig, so the
 * type-checked rules are switched off for it (`disableTypeChecked`); every fence rule is
 * syntactic and runs exactly as in `npm run lint`.
 */
import { fileURLToPath } from 'node:url';
import { ESLint, type Linter } from 'eslint';
import tseslint from 'typescript-eslint';
import { beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');
const VIRTUAL = [
  'actors/src/x.ts',
  'services/kit/src/x.ts',
  'services/sandbox/src/x.ts',
  'services/cli/src/x.ts',
  'schemas/src/names.ts',
  'test/unit/x.test.ts',
  'services/console/web/src/x.tsx',
];

let eslint: ESLint;

beforeAll(() => {
  eslint = new ESLint({
    cwd: ROOT,
    overrideConfigFile: 'infra/eslint.config.mjs',
    overrideConfig: [{ files: VIRTUAL, ...(tseslint.configs.disableTypeChecked as Linter.Config) }],
  });
});

async function lint(code: string, filePath = 'actors/src/x.ts'): Promise<Linter.LintMessage[]> {
  const [result] = await eslint.lintText(code, { filePath });
  if (!result) throw new Error('ESLint returned no result');
  return result.messages;
}

const render = (ms: Linter.LintMessage[]) => ms.map((m) => `${m.line}:${m.column} ${m.ruleId ?? 'fatal'} ${m.message}`).join('\n');

/** Each snippet must produce exactly one error from `rule`, whose message mentions `says`. */
const fence: { what: string; code: string; rule: string; says: string }[] = [
  // imports
  { what: 'a node: builtin', code: "import { readFileSync } from 'node:fs';\nexport { readFileSync };", rule: 'no-restricted-imports', says: 'may import only' },
  { what: 'a bare builtin', code: "import { randomUUID } from 'crypto';\nexport { randomUUID };", rule: 'no-restricted-imports', says: 'may import only' },
  { what: 'pg', code: "import pg from 'pg';\nexport { pg };", rule: 'no-restricted-imports', says: 'no pg' },
  { what: '@nats-io/*', code: "import { jetstream } from '@nats-io/jetstream';\nexport { jetstream };", rule: 'no-restricted-imports', says: 'no @nats-io/*' },
  { what: 'pino', code: "import pino from 'pino';\nexport { pino };", rule: 'no-restricted-imports', says: 'no pino' },
  { what: 'another Capstan package', code: "import { createClient } from '@capstan/kit';\nexport { createClient };", rule: 'no-restricted-imports', says: 'may import only' },
  { what: 'a type-only import', code: "import type { Pool } from 'pg';\nexport type { Pool };", rule: 'no-restricted-imports', says: 'may import only' },
  { what: 'a re-export', code: "export { hostname } from 'node:os';", rule: 'no-restricted-imports', says: 'may import only' },
  {
    what: 'a relative import out of actors/',
    code: "import { createClient } from '../../services/kit/src/index.js';\nexport { createClient };",
    rule: 'capstan/imports-within',
    says: 'resolves outside actors/src/',
  },
  { what: 'a relative re-export out of actors/', code: "export * from '../../schemas/src/index.js';", rule: 'capstan/imports-within', says: 'resolves outside actors/src/' },
  { what: 'a dynamic import', code: "export const fs = import('./workflow.js');", rule: 'no-restricted-syntax', says: 'no dynamic imports' },
  // clocks
  { what: 'Date.now()', code: 'export const t = Date.now();', rule: 'no-restricted-properties', says: "Time comes from the event's `at`" },
  { what: 'a reference to Date.now', code: 'export const now = Date.now;', rule: 'no-restricted-properties', says: "Time comes from the event's `at`" },
  { what: 'new Date()', code: 'export const t = new Date();', rule: 'no-restricted-syntax', says: "Time comes from the event's `at`" },
  { what: 'Date()', code: 'export const t = Date();', rule: 'no-restricted-syntax', says: "Time comes from the event's `at`" },
  { what: 'performance.now()', code: 'export const t = performance.now();', rule: 'no-restricted-globals', says: "Time comes from the event's `at`" },
  // randomness
  { what: 'Math.random()', code: 'export const r = Math.random();', rule: 'no-restricted-properties', says: 'never from a random source' },
  { what: 'crypto.randomUUID()', code: 'export const id = crypto.randomUUID();', rule: 'no-restricted-globals', says: 'never from a random source' },
  // timers, process, escape hatches
  { what: 'setTimeout', code: 'setTimeout(() => undefined, 10);', rule: 'no-restricted-globals', says: 'Waiting is a decision' },
  { what: 'setInterval', code: 'setInterval(() => undefined, 10);', rule: 'no-restricted-globals', says: 'Waiting is a decision' },
  { what: 'setImmediate', code: 'setImmediate(() => undefined);', rule: 'no-restricted-globals', says: 'Waiting is a decision' },
  { what: 'process', code: "export const env = process.env['TZ'];", rule: 'no-restricted-globals', says: 'reads no environment' },
  { what: 'globalThis', code: 'export const D = globalThis.Date;', rule: 'no-restricted-globals', says: 'bypass this fence' },
  // names (not specific to actors/, but it applies here too)
  { what: 'a subject literal', code: "export const s = 'cap.t1.runs.x';", rule: 'no-restricted-syntax', says: 'schemas/src/names.ts' },
  { what: 'a stream-name template', code: "const t = 't1';\nexport const s = `CAP_RUNS_${t}`;", rule: 'no-restricted-syntax', says: 'schemas/src/names.ts' },
];

describe('the actors/ fence', () => {
  it.each(fence)('reports $what', async ({ code, rule, says }) => {
    const messages = await lint(code);
    expect(
      messages.every((m) => m.ruleId === rule),
      render(messages),
    ).toBe(true);
    expect(messages, render(messages)).toHaveLength(1);
    expect(messages[0]?.severity).toBe(2);
    expect(messages[0]?.message).toContain(says);
  });

  it('reports a deep import into another package', async () => {
    const messages = await lint("import { Subjects } from '@capstan/schemas/src/names.js';\nexport { Subjects };");
    expect(messages.length, render(messages)).toBeGreaterThan(0);
    expect(
      messages.every((m) => m.ruleId === 'no-restricted-imports'),
      render(messages),
    ).toBe(true);
    expect(
      messages.some((m) => m.message.includes('not its src/ or dist/ files')),
      render(messages),
    ).toBe(true);
  });

  it('lets a clean, deterministic file through', async () => {
    const clean = [
      "import { setup } from 'xstate';",
      "import { Subjects, type RunEvent, type RunId, type TenantId } from '@capstan/schemas';",
      "import { defineWorkflow } from './workflow.js';",
      "import type { Registry } from './registry.js';",
      'export { defineWorkflow, type Registry };',
      '/** Time and ids come from recorded events. */',
      'export const when = (e: RunEvent) => new Date(e.at).toISOString();',
      'export const subject = (t: TenantId, r: RunId) => Subjects.run(t, r);',
      'export const machine = setup({}).createMachine({});',
      'export const later = (e: RunEvent, ms: number) => e.at + ms;',
    ].join('\n');
    const messages = await lint(clean);
    expect(messages, render(messages)).toEqual([]);
  });
});

describe('outside actors/', () => {
  it('services may read the clock and import what they need', async () => {
    const code = "import { hostname } from 'node:os';\nexport const t = Date.now();\nexport const h = hostname();\nsetTimeout(() => undefined, 1);";
    expect(render(await lint(code, 'services/kit/src/x.ts'))).toBe('');
  });

  it('services may not spell subjects or deep-import packages', async () => {
    const messages = await lint("import { Subjects } from '@capstan/schemas/dist/names.js';\nexport { Subjects };\nexport const s = 'cap.t1.cmd.submit';", 'services/kit/src/x.ts');
    expect(messages.map((m) => m.ruleId).sort(), render(messages)).toEqual(['no-restricted-imports', 'no-restricted-syntax']);
  });

  it("the console's UI keeps the rules of hooks", async () => {
    const conditional = "import { useState } from 'react';\nexport function V(p: { on: boolean }) {\n  if (p.on) useState(0);\n  return null;\n}";
    const stale = "import { useEffect } from 'react';\nexport function V(p: { id: string }) {\n  useEffect(() => console.log(p.id), []);\n  return null;\n}";
    expect((await lint(conditional, 'services/console/web/src/x.tsx')).map((m) => m.ruleId)).toEqual(['react-hooks/rules-of-hooks']);
    expect((await lint(stale, 'services/console/web/src/x.tsx')).map((m) => m.ruleId)).toEqual(['react-hooks/exhaustive-deps']);
  });

  it('services may not ask where the repository checkout is; the CLI and tests may', async () => {
    const code = "import { PROJECT_ROOT } from '@capstan/kit';\nexport const root = PROJECT_ROOT;";
    const messages = await lint(code, 'services/sandbox/src/x.ts');
    expect(
      messages.map((m) => m.ruleId),
      render(messages),
    ).toEqual(['no-restricted-imports']);
    expect(messages[0]?.message).toContain('does not reach into the repository checkout');
    // The deep-import ban still holds beside it (one rule, both option lists).
    expect(render(await lint("import { x } from '@capstan/kit/src/index.js';\nexport { x };", 'services/sandbox/src/x.ts'))).toContain('not its src/ or dist/ files');
    expect(render(await lint(code, 'services/cli/src/x.ts'))).toBe('');
    expect(render(await lint(code, 'test/unit/x.test.ts'))).toBe('');
  });

  it('names.ts and tests may spell subjects', async () => {
    expect(render(await lint("export const p = 'CAP_';", 'schemas/src/names.ts'))).toBe('');
    expect(render(await lint("export const s = 'cap.t1.runs.x';", 'test/unit/x.test.ts'))).toBe('');
  });
});
