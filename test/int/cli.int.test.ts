/**
 * The `capstan` command as a user runs it (a real process): submit and wait, status, events,
 * replay (and replay under an edited workflow version, which must fail with a diff), dead
 * letters, and clear errors with distinct exit codes for bad input.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { join } from 'node:path';
import { newRunId, PROJECT_ROOT } from '@capstan/kit';
import type { TenantId } from '@capstan/schemas';
import { runCli, serveTenant, type ServedTenant } from '../harness/fixtures.js';

let t: TenantId;
let url: string;

const capstan = (args: string[], env: Record<string, string> = {}) => runCli(args, { NATS_URL: url, ...env });

let served: ServedTenant;

beforeAll(async () => {
  url = inject('natsUrl');
  served = await serveTenant(url, 'cli');
  ({ t } = served);
});

// Every run this file made must replay through its recorded version.
afterAll(() => served?.close());

describe('cli', () => {
  let runId = '';

  it('cli - submit --wait --json runs demo.pipeline to completion', async () => {
    const r = await capstan(['submit', 'demo.pipeline', '--tenant', t, '--input', '{"customer":42}', '--wait', '--json']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.out) as { runId: string; status: string; steps: { name: string; outcome: string }[]; output: unknown };
    expect(summary.status).toBe('completed');
    expect(summary.steps.map((s) => [s.name, s.outcome])).toEqual([
      ['extract', 'completed'],
      ['transform', 'completed'],
      ['load', 'completed'],
    ]);
    expect(summary.output).toEqual({ ok: true, n: 3 });
    runId = summary.runId;
  });

  it('cli - status and events show the run', async () => {
    const s = await capstan(['status', runId, '--tenant', t]);
    expect(s.code).toBe(0);
    expect(s.out).toContain('demo.pipeline@1');
    expect(s.out).toContain('completed');
    const e = await capstan(['events', runId, '--tenant', t, '--json']);
    expect(e.code).toBe(0);
    const events = JSON.parse(e.out) as { seq: number; type: string }[];
    expect(events.map((x) => x.seq)).toEqual(events.map((_, i) => i + 1));
    expect(events.at(-1)?.type).toBe('run.completed');
  });

  it('cli - replay reproduces the run through its recorded version', async () => {
    const r = await capstan(['replay', runId, '--tenant', t]);
    expect(r.code).toBe(0);
    expect(r.out).toContain(`replay reproduces run ${runId}: completed`);
    expect(r.out).toMatch(/step\.completed\s+→ step_transform/);
  });

  it('cli - replay under an edited workflow version fails with a precise diff', async () => {
    const r = await capstan(['replay', runId, '--tenant', t], { CAPSTAN_WORKFLOWS: join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows-changed.js') });
    expect(r.code).toBe(1);
    expect(r.out).toContain(`replay of run ${runId} diverges from its record at event`);
    expect(r.out).toContain('step.scheduled: data.timeoutMs: recorded 30000, replay 45000');
  });

  it('cli - bad input gets a clear error and exit code 2; an unknown run exit code 3', async () => {
    const cases: [string[], number, string][] = [
      [['submit', 'demo.pipeline'], 2, '--tenant <id> is required'],
      [['submit', 'demo.pipeline', '--tenant', 'Bad!'], 2, 'is not a valid tenant id'],
      [['submit', 'demo.pipeline', '--tenant', t, '--input', '{oops'], 2, '--input is not valid JSON'],
      [['submit', 'demo.pipeline', '--tenant', t, '--input', '[1]'], 2, '--input must be a JSON object'],
      [['status', 'not-a-run', '--tenant', t], 2, 'is not a run id'],
      [['status', runId, '--tenant', t, '--bogus'], 2, "Unknown option '--bogus'"],
      [['frobnicate'], 2, 'unknown command'],
      [['status', newRunId(), '--tenant', t], 3, 'run_not_found'],
      [['status', runId, '--tenant', t, '--nats', 'nats://127.0.0.1:1'], 1, 'unavailable: cannot reach NATS'],
    ];
    for (const [args, code, message] of cases) {
      const r = await capstan(args);
      expect({ args, code: r.code }).toEqual({ args, code });
      expect(r.err).toContain(message);
    }
  });

  it('cli - an unknown workflow is dead-lettered and listed by `capstan dlq`', async () => {
    const r = await capstan(['submit', 'no.such.flow', '--tenant', t]);
    expect(r.code).toBe(0);
    let listed = '';
    for (let i = 0; i < 50 && !listed.includes('unknown_workflow'); i++) {
      await new Promise((res) => setTimeout(res, 100));
      listed = (await capstan(['dlq', '--tenant', t])).out;
    }
    expect(listed).toContain('unknown_workflow');
    expect(listed).toContain('no.such.flow');
  });
});
