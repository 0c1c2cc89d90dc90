/**
 * Property: generated workflows built from every engine-2 construct (tasks, sandboxed tasks
 * behind the policy gate, waits with and without timeouts, sleeps, parallel branches,
 * fan-outs with each fan-in, branches, conditions, bounded loops, child workflows with either
 * parent-close policy, continue-as-new, patches) × generated interleavings of
 * results, failures, timeouts, policy answers, approvals, signals (early ones included),
 * timers, cancels and retries. Every history folds twice to the same state; replay derives
 * exactly the recorded decisions; the status read off the events agrees with the machine's
 * after every decision; inputs the run refuses are never recorded.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createRegistry, defineWorkflow, foldRun, runStatus, statusFromEvents, type StepDefinition, type WorkflowDefinition } from '@capstan/actors';
import { CapstanError, ErrorCode, TimerKind, type InputEventBody, type JsonValue } from '@capstan/schemas';
import { RunRecorder, cancel, completed, failed, fired, signaled, started } from './support/runs.js';

type Gen = { n: number };
const SIGNALS = ['go', 'more'];

/** A random step tree: depth-bounded, names unique (`s<n>`). */
function stepArb(depth: number): fc.Arbitrary<(g: Gen) => StepDefinition> {
  const name = (g: Gen) => `s${g.n++}`;
  const task = fc.record({ attempts: fc.integer({ min: 1, max: 3 }), gated: fc.boolean(), when: fc.constantFrom(undefined, true, false) }).map((o) => (g: Gen): StepDefinition => ({
    name: name(g),
    retry: { maxAttempts: o.attempts, initialIntervalMs: 10 },
    timeoutMs: 1000,
    ...(o.gated ? { mode: 1 as const, sandbox: { command: ['true'] } } : {}),
    ...(o.when === undefined ? {} : { when: () => o.when as boolean }),
  }));
  const wait = fc
    .record({ signal: fc.constantFrom(...SIGNALS), timeout: fc.constantFrom(undefined, 'fail', 'continue') })
    .map((o) => (g: Gen): StepDefinition => ({ name: name(g), signal: o.signal, ...(o.timeout ? { timeoutMs: 500, onTimeout: o.timeout as 'fail' | 'continue' } : {}) }));
  const sleep = fc.constant((g: Gen): StepDefinition => ({ name: name(g), sleep: { ms: 100 } }));
  const child = fc
    .record({ attempts: fc.integer({ min: 1, max: 3 }), close: fc.constantFrom<'cancel' | 'abandon'>('cancel', 'abandon') })
    .map((o) => (g: Gen): StepDefinition => ({ name: name(g), child: 'prop.child', parentClose: o.close, retry: { maxAttempts: o.attempts, initialIntervalMs: 10 } }));
  // Continue-as-new ends the run; most are guarded so that the run usually goes on.
  const cont = fc.boolean().map((go) => (g: Gen): StepDefinition => ({ name: name(g), when: () => go, continueAsNew: ({ input }) => ({ ...input, again: true }) }));
  const leaf = fc.oneof(
    { weight: 4, arbitrary: task },
    { weight: 2, arbitrary: wait },
    { weight: 1, arbitrary: sleep },
    { weight: 2, arbitrary: child },
    { weight: 1, arbitrary: cont },
  );
  if (depth === 0) return leaf;
  const seq = fc.array(stepArb(depth - 1), { minLength: 1, maxLength: 2 });
  const fan = fc
    .record({
      items: fc.integer({ min: 0, max: 4 }),
      concurrency: fc.integer({ min: 1, max: 3 }),
      join: fc.constantFrom<'all' | 'first' | { atLeast: number }>('all', 'first', { atLeast: 2 }),
      attempts: fc.integer({ min: 1, max: 2 }),
    })
    .map((o) => (g: Gen): StepDefinition => ({
      name: name(g),
      forEach: () => Array.from({ length: o.items }, (_, i) => i),
      concurrency: o.concurrency,
      join: o.join,
      run: { retry: { maxAttempts: o.attempts, initialIntervalMs: 5 } },
    }));
  const parallel = fc.array(seq, { minLength: 2, maxLength: 3 }).map((bs) => (g: Gen): StepDefinition => ({ name: name(g), parallel: bs.map((b) => b.map((f) => f(g))) }));
  const branch = fc
    .record({ pick: fc.boolean(), then: seq, else: fc.option(seq, { nil: undefined }) })
    .map((o) => (g: Gen): StepDefinition => ({ name: name(g), if: () => o.pick, then: o.then.map((f) => f(g)), ...(o.else ? { else: o.else.map((f) => f(g)) } : {}) }));
  // Some loops exit after their first iteration; the others run to their limit (loop_limit).
  const loop = fc
    .record({ body: seq, max: fc.integer({ min: 1, max: 3 }), exits: fc.boolean() })
    .map((o) => (g: Gen): StepDefinition => ({ name: name(g), loop: o.body.map((f) => f(g)), until: () => o.exits, maxIterations: o.max }));
  const patch = fc
    .record({ id: fc.constantFrom('p1', 'p2'), then: seq, else: fc.option(seq, { nil: undefined }) })
    .map((o) => (g: Gen): StepDefinition => ({ name: name(g), patched: `${o.id}-${g.n}`, then: o.then.map((f) => f(g)), ...(o.else ? { else: o.else.map((f) => f(g)) } : {}) }));
  return fc.oneof(
    { weight: 7, arbitrary: leaf },
    { weight: 1, arbitrary: fan },
    { weight: 1, arbitrary: parallel },
    { weight: 1, arbitrary: branch },
    { weight: 1, arbitrary: loop },
    { weight: 1, arbitrary: patch },
  );
}

const workflowArb = fc.array(stepArb(2), { minLength: 1, maxLength: 4 }).map((fs) => {
  const g = { n: 1 };
  return defineWorkflow({ id: 'prop.e2', version: 1, steps: fs.map((f) => f(g)) });
});

/** What the driver may do next: pick one of the inputs the run could take, or a wrong one. */
const opArb = fc.record({ pick: fc.nat(), kind: fc.nat({ max: 99 }), value: fc.oneof(fc.constant(null), fc.integer({ min: 0, max: 9 }), fc.constant({ ok: true })) });

interface Inst {
  kind: 'task' | 'signal' | 'sleep' | 'child';
  child?: string;
  node: string;
  attempt: number;
  phase: string;
  started?: boolean;
  asks?: number;
  cred?: boolean;
}

/** Inputs a real deployment could send now: mostly about open steps, sometimes stale or stray. */
function candidates(r: RunRecorder, op: { kind: number; value: JsonValue }): InputEventBody[] {
  const ctx = r.state.snapshot.context as { inst?: Record<string, Inst> };
  const out: InputEventBody[] = [];
  for (const [key, i] of Object.entries(ctx.inst ?? {})) {
    const a = i.attempt;
    if (i.kind === 'child' && i.phase === 'started') {
      const child = i.child ?? '';
      out.push({ type: 'child.completed', data: { step: key, attempt: a, child, result: op.value } });
      out.push({ type: 'child.failed', data: { step: key, attempt: a, child, error: { code: ErrorCode.ChildFailed, message: 'the child failed', retryable: op.kind % 3 !== 0 } } });
      continue;
    }
    switch (i.phase) {
      case 'authorize':
        out.push({
          type: 'policy.decided',
          data: { step: key, attempt: a, decision: op.kind % 7 === 0 ? 'deny' : op.kind % 5 === 0 ? 'needs-approval' : 'allow', version: 1, policies: ['p'] },
        });
        out.push({ type: 'timer.fired', data: { timerId: `${key}-a${a}-policy-${i.asks ?? 1}`, kind: TimerKind.Policy, step: key, attempt: a } });
        break;
      case 'approve':
        out.push({ type: 'approval.decided', data: { step: key, decision: op.kind % 4 === 0 ? 'deny' : 'approve', by: 'ann' } });
        out.push(fired(key, a, TimerKind.Approval));
        break;
      case 'scheduled':
      case 'started':
        if (i.phase === 'scheduled') out.push(started(key, a));
        out.push(completed(key, a, op.value));
        out.push(failed(key, a, op.kind % 3 !== 0));
        if (i.phase === 'started') out.push(fired(key, a, TimerKind.Timeout));
        break;
      case 'backoff':
        out.push(fired(key, a, TimerKind.Retry));
        break;
      case 'waiting':
        out.push({ type: 'approval.decided', data: { step: key, decision: op.kind % 5 === 0 ? 'deny' : 'approve', by: 'bob' } });
        out.push(fired(key, a, TimerKind.Wait));
        break;
      case 'sleeping':
        out.push(fired(key, a, TimerKind.Sleep));
        break;
      default:
        // Finished instances: their late inputs must be refused.
        out.push(completed(key, a), fired(key, a, TimerKind.Timeout));
    }
  }
  // Signals (early ones too), cancels, retries and strays.
  out.push(signaled(SIGNALS[op.kind % 2] as string, op.value));
  if (op.kind > 95) out.push(cancel('enough'));
  if (r.state.snapshot.hasTag('failed')) out.push({ type: 'run.retried', data: { by: 'ops' } });
  out.push(completed('nope', 1));
  return out;
}

describe('engine 2 - property: constructs × interleavings', () => {
  it('engine 2 - generated workflows and interleavings fold twice to one state, replay derives every recorded decision, statuses agree', () => {
    const seen = { runs: 0, inputs: 0, refused: 0, completed: 0, failed: 0, cancelled: 0, retried: 0, constructs: new Set<string>() };
    fc.assert(
      fc.property(workflowArb, fc.array(opArb, { minLength: 1, maxLength: 60 }), (wf: WorkflowDefinition, ops) => {
        for (const n of wf.nodes ?? []) seen.constructs.add(n.kind);
        const r = new RunRecorder(wf, {}, undefined, undefined, 2);
        for (const op of ops) {
          if (r.state.snapshot.status !== 'active') break;
          const all = candidates(r, op);
          const input = all[op.pick % all.length] as InputEventBody;
          const before = r.events.length;
          try {
            r.apply(input);
            seen.inputs++;
            if (input.type === 'run.retried') seen.retried++;
          } catch (e) {
            if (!CapstanError.is(e)) throw e;
            expect([ErrorCode.StaleAttempt, ErrorCode.EventRejected, ErrorCode.ApprovalNotWaiting, ErrorCode.RunNotRetryable]).toContain(e.code);
            // Refused: nothing recorded.
            expect(r.events.length).toBe(before);
            seen.refused++;
          }
        }
        seen.runs++;
        const last = r.events.at(-1)?.type;
        if (last === 'run.completed') seen.completed++;
        if (last === 'run.failed') seen.failed++;
        if (last === 'run.cancelled') seen.cancelled++;
        const reg = createRegistry([wf]);
        const a = foldRun(reg, r.events);
        const b = foldRun(reg, r.events);
        expect(a.state.snapshot.value).toEqual(r.state.snapshot.value);
        expect(a.state.snapshot.context).toEqual(r.state.snapshot.context);
        expect(b.state.snapshot.context).toEqual(a.state.snapshot.context);
        expect(a.timeline).toEqual(r.timeline);
        for (const cp of r.checkpoints) expect(runStatus(cp.state)).toBe(statusFromEvents(r.events.slice(0, cp.events)));
      }),
      { numRuns: 300, seed: 1306 },
    );
    process.stdout.write(
      `engine 2 property: ${seen.runs} runs, ${seen.inputs} inputs recorded, ${seen.refused} refused; ended completed ${seen.completed}, failed ${seen.failed}, cancelled ${seen.cancelled}; ${seen.retried} retries; constructs at top level: ${[...seen.constructs].sort().join(', ')}\n`,
    );
    expect(seen.completed).toBeGreaterThan(10);
    expect(seen.failed).toBeGreaterThan(10);
    expect(seen.retried).toBeGreaterThan(5);
    expect(seen.constructs.size).toBe(10);
  });
});
