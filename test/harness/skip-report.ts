/**
 * Prints the run's skip count and fails the run on a skip that should not have happened.
 *
 * A skip is allowed only where `npm test` could not provide what the test needs (its
 * provisioning, infra/provision.mjs, recorded that in .capstan/provision.json: not root, no
 * sudo). Anywhere else, and always under CI, a skipped test fails the run: a test that did
 * not run proves nothing, and a pass count that hides it is a defect. Runs narrowed by
 * `-t`/`.only` skip the rest on purpose and are only reported.
 */
import { existsSync, readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Reporter, TestModule, TestRunEndReason, Vitest } from 'vitest/node';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const PROVISION = fileURLToPath(new URL('../../.capstan/provision.json', import.meta.url));

interface Missing {
  readonly what: string;
  readonly how: string;
}

function provisionedMissing(): Missing[] | undefined {
  if (!existsSync(PROVISION)) return undefined;
  try {
    return (JSON.parse(readFileSync(PROVISION, 'utf8')) as { missing?: Missing[] }).missing ?? [];
  } catch {
    return undefined;
  }
}

export default class SkipReport implements Reporter {
  private narrowed = false;

  onInit(vitest: Vitest): void {
    this.narrowed = vitest.config.testNamePattern !== undefined;
  }

  onTestRunEnd(modules: ReadonlyArray<TestModule>, _errors: unknown, reason: TestRunEndReason): void {
    if (reason === 'interrupted') return;
    const skipped: string[] = [];
    let only = false;
    for (const m of modules) {
      for (const t of m.children.allTests()) {
        if (t.options.mode === 'only') only = true;
        const r = t.result();
        if (r.state === 'skipped') skipped.push(`  ${relative(ROOT, m.moduleId)} > ${t.fullName}${r.note ? `: ${r.note}` : ''}`);
      }
    }
    const out = (s: string) => process.stdout.write(`${s}\n`);
    out(`\ntests skipped: ${skipped.length}`);
    if (skipped.length === 0) return;
    out(skipped.join('\n'));
    if (this.narrowed || only) {
      out('(the run was narrowed by -t or .only: skips not checked)');
      return;
    }
    const ci = Boolean(process.env['CI']) && process.env['CI'] !== 'false';
    const missing = provisionedMissing();
    if (!ci && missing && missing.length > 0) {
      out('allowed, because this machine lacks what `npm test` could not install here:');
      for (const m of missing) out(`  ${m.what}: ${m.how}`);
      return;
    }
    out(
      ci
        ? 'FAILED: CI runs every test; nothing may be skipped'
        : missing
          ? 'FAILED: `npm test` provisioned everything these tests need (.capstan/provision.json), yet they skipped'
          : 'FAILED: skipped tests; run `node infra/provision.mjs test` (or `npm test`) to provide what they need',
    );
    process.exitCode = 1;
  }
}
