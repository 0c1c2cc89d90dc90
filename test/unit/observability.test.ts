/**
 * The pure parts of tracing and incident review: a run's hops from its record (folded at
 * once or event by event, the same), traceparent parsing, derived span ids, workflow
 * fingerprints, telemetry config, and the export file: a round trip, and every changed byte
 * and every cut detected and named by its record.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { defineWorkflow } from '@capstan/actors';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  foldHops,
  HopFold,
  hopSpanId,
  metricsRegistry,
  PROJECT_ROOT,
  readExport,
  telemetryConfig,
  tracingConfig,
  workflowFingerprint,
  writeExport,
  type StoredRecord,
} from '@capstan/kit';
import { CapstanError, encode, ErrorCode, formatTraceParent, parseTenantId, parseTraceParent, type RunEvent } from '@capstan/schemas';
import { RunRecorder, completed, failed, retryFired, signaled, started } from './support/runs.js';

const wf = defineWorkflow({
  id: 'obs.flow',
  version: 1,
  steps: [
    { name: 'fetch', retry: { maxAttempts: 3, initialIntervalMs: 10 } },
    { name: 'review', signal: 'go' },
    { name: 'write', mode: 1, sandbox: { command: ['true'] } },
  ],
});

/** fetch fails once and is retried, review waits for `go`, write is allowed by policy and completes. */
function recorded(): RunEvent[] {
  const r = new RunRecorder(wf);
  r.apply(started('fetch', 1));
  r.apply(failed('fetch', 1));
  r.apply(retryFired('fetch', 1));
  r.apply(completed('fetch', 2));
  r.apply(signaled('go'));
  r.apply({ type: 'policy.decided', data: { step: 'write', attempt: 1, decision: 'allow', version: 3, policies: ['p'] } });
  r.apply(completed('write', 1));
  return r.events;
}

describe('hops', () => {
  it('a run’s record folds into its hops, each under its parent, with recorded times and outcomes', () => {
    const events = recorded();
    const hops = foldHops(events);
    const view = hops.map((h) => [h.key, h.parent ?? '-', h.status, h.error ?? '']);
    expect(view).toEqual([
      ['step:fetch:1', 'run', 'error', 'boom'],
      ['backoff:fetch:1', 'run', 'ok', ''],
      ['step:fetch:2', 'run', 'ok', ''],
      ['wait:review', 'run', 'ok', ''],
      ['policy:write:1', 'run', 'ok', ''],
      ['step:write:1', 'run', 'ok', ''],
      ['run', '-', 'ok', ''],
    ]);
    const at = (type: string, n = 0) => events.filter((e) => e.type === type)[n]?.at;
    const fetch2 = hops.find((h) => h.key === 'step:fetch:2');
    expect([fetch2?.start, fetch2?.end]).toEqual([at('step.scheduled', 1), at('step.completed', 0)]);
    const run = hops.find((h) => h.key === 'run');
    expect([run?.start, run?.end, run?.name]).toEqual([events[0]?.at, events.at(-1)?.at, 'run obs.flow@1']);
    expect(hops.find((h) => h.key === 'policy:write:1')?.attributes).toMatchObject({ 'capstan.policy.decision': 'allow', 'capstan.policy.version': 3 });
  });

  it('folding event by event gives what folding at once gives; each event names the hop it belongs to', () => {
    const events = recorded();
    const fold = new HopFold();
    const finished = events.flatMap((e) => fold.add(e).finished);
    expect(finished).toEqual(foldHops(events));
    const g = new HopFold();
    const belongs = events.map((e) => [e.type, g.add(e).belongsTo]);
    expect(belongs).toContainEqual(['step.completed', 'step:fetch:2']);
    expect(belongs).toContainEqual(['policy.decided', 'policy:write:1']);
    expect(belongs).toContainEqual(['run.signaled', 'wait:review']);
  });

  it('an event type without a rule is an instant on the run; a run that ends closes what is open as ended', () => {
    const [start, scheduled] = recorded();
    const later = (seq: number, type: string, data: object) => ({ ...(scheduled as RunEvent), seq, type, data }) as unknown as RunEvent;
    const hops = foldHops([start as RunEvent, scheduled as RunEvent, later(3, 'branch.joined', {}), later(4, 'run.cancelled', {})]);
    expect(hops.map((h) => [h.key, h.kind, h.status, h.name])).toEqual([
      ['event:3', 'event', 'ok', 'branch.joined'],
      ['step:fetch:1', 'step', 'ended', 'step fetch#1'],
      ['run', 'run', 'error', 'run obs.flow@1'],
    ]);
  });

  it('hop span ids: 16 hex, the same for the same run and hop, different otherwise', () => {
    const a = hopSpanId('01ARZ3NDEKTSV4RRFFQ69G5FAV', 'step:a:1');
    expect(a).toMatch(/^[0-9a-f]{16}$/);
    expect(hopSpanId('01ARZ3NDEKTSV4RRFFQ69G5FAV', 'step:a:1')).toBe(a);
    expect(hopSpanId('01ARZ3NDEKTSV4RRFFQ69G5FAV', 'step:a:2')).not.toBe(a);
    expect(hopSpanId('01ARZ3NDEKTSV4RRFFQ69G5FAW', 'step:a:1')).not.toBe(a);
    // Scheme capstan/hop/v1: services of different builds name the same hop alike, so the values are pinned.
    expect(a).toBe('62cfc85d7ddf62f8');
    expect(hopSpanId('01ARZ3NDEKTSV4RRFFQ69G5FAV', 'checkpoint:12')).toBe('5ca551df62053b2a');
    expect(hopSpanId('x', '')).toBe('e7bd9791f22f8a53');
  });
});

describe('trace context', () => {
  it('parses W3C traceparents and refuses invalid ones', () => {
    const ok = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    expect(parseTraceParent(ok)).toEqual({ traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', sampled: true });
    expect(parseTraceParent(ok.replace(/-01$/, '-00'))?.sampled).toBe(false);
    expect(formatTraceParent(parseTraceParent(ok) as never)).toBe(ok);
    const bad = [
      '',
      'garbage',
      '00-00000000000000000000000000000000-00f067aa0ba902b7-01',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01',
      'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra',
      '00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01',
    ];
    expect(bad.map((b) => parseTraceParent(b))).toEqual(bad.map(() => undefined));
    // A later version may carry more after the flags.
    expect(parseTraceParent('01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more')?.spanId).toBe('00f067aa0ba902b7');
  });

  it('telemetry config: off unless an exporter is configured; every problem listed', () => {
    expect(tracingConfig({}, []).enabled).toBe(false);
    expect(tracingConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318' }, []).enabled).toBe(true);
    expect(tracingConfig({ OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://x:1' }, []).enabled).toBe(false);
    expect(tracingConfig({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_SDK_DISABLED: 'true' }, []).enabled).toBe(false);
    expect(tracingConfig({ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.01' }, [])).toMatchObject({
      sampler: 'parentbased_traceidratio',
      ratio: 0.01,
    });
    let err: unknown;
    try {
      telemetryConfig({ OTEL_TRACES_EXPORTER: 'jaeger', OTEL_TRACES_SAMPLER: 'sometimes', METRICS_PORT: '99999' });
    } catch (e) {
      err = e;
    }
    expect(CapstanError.is(err) && err.code).toBe(ErrorCode.InvalidConfig);
    expect((err as { problems: string[] }).problems).toHaveLength(3);
  });

  it('workflow fingerprints: stable for a definition, changed by any change to it', () => {
    const again = defineWorkflow({
      id: 'obs.flow',
      version: 1,
      steps: [
        { name: 'fetch', retry: { maxAttempts: 3, initialIntervalMs: 10 } },
        { name: 'review', signal: 'go' },
        { name: 'write', mode: 1, sandbox: { command: ['true'] } },
      ],
    });
    const edited = defineWorkflow({
      id: 'obs.flow',
      version: 1,
      steps: [
        { name: 'fetch', retry: { maxAttempts: 4, initialIntervalMs: 10 } },
        { name: 'review', signal: 'go' },
        { name: 'write', mode: 1, sandbox: { command: ['true'] } },
      ],
    });
    expect(workflowFingerprint(wf)).toMatch(/^[0-9a-f]{64}$/);
    expect(workflowFingerprint(again)).toBe(workflowFingerprint(wf));
    expect(workflowFingerprint(edited)).not.toBe(workflowFingerprint(wf));
  });
});

describe('export file', () => {
  const t = parseTenantId('acme');
  const events = recorded();
  const stored: StoredRecord[] = events.map((e, i) => ({ data: encode(e), seq: 10 + i, time: new Date(e.at + 1) }));
  const policy: StoredRecord = {
    data: encode({
      version: 1,
      text: 'permit(principal, action, resource);',
      sha256: 'a0c5bbb7d1a11e0b0ae0ac8d2a2bbd92a5d3d0f4b88e7ef7e4c82f19e5c9b4d6',
      by: 'x',
      at: new Date(0).toISOString(),
    }),
    seq: 1,
    time: new Date(0),
  };
  const file = writeExport({
    tenant: t,
    scope: { runs: [events[0]?.runId as string] },
    created: new Date(0),
    runs: new Map([[events[0]?.runId as string, stored]]),
    policies: [],
    fingerprints: new Map([['obs.flow@1', workflowFingerprint(wf)]]),
  });
  const text = file.toString('utf8');
  const lines = text.split('\n').filter(Boolean);

  it('round-trips: the events exactly, the fingerprints, the counts', () => {
    const c = readExport(file);
    expect(c.runs.get(events[0]?.runId as string)).toEqual(events);
    expect(c.workflows).toEqual([{ id: 'obs.flow', version: 1, fingerprint: workflowFingerprint(wf) }]);
    expect([c.events, lines.length]).toEqual([events.length, events.length + 3]);
    expect(readExport(writeExport({ tenant: t, scope: { since: 'a', until: 'b' }, created: new Date(0), runs: new Map(), policies: [] }, { gzip: true })).runs.size).toBe(0);
    // A policy record whose text does not match its digest is refused where it stands.
    const withPolicy = writeExport({ tenant: t, scope: { runs: [] }, created: new Date(0), runs: new Map(), policies: [policy] });
    expect(() => readExport(withPolicy)).toThrow(/record 2: policy version 1's text does not match its sha256/);
  });

  const damagedAt = (bytes: Buffer): number => {
    try {
      readExport(bytes);
    } catch (e) {
      if (CapstanError.is(e) && e.code === ErrorCode.ExportDamaged) return (e as unknown as { record: number }).record;
      throw e;
    }
    return 0;
  };

  it('property: any one changed byte is detected, and named by the record it is in', () => {
    const starts = lines.map((_, i) => lines.slice(0, i).reduce((n, l) => n + Buffer.byteLength(l) + 1, 0));
    fc.assert(
      fc.property(fc.nat(file.length - 2), fc.integer({ min: 1, max: 255 }), (pos, delta) => {
        const b = Buffer.from(file);
        b[pos] = ((b[pos] as number) + delta) % 256;
        if (b.equals(file)) return;
        const record = starts.filter((s) => s <= pos).length;
        const named = damagedAt(b);
        // A byte turned into a newline splits its record: the first half is the bad one.
        expect(named).toBe(record);
      }),
      { numRuns: 400 },
    );
  });

  it('property: any cut of the file is detected, naming a record at or before the cut', () => {
    fc.assert(
      fc.property(fc.nat(file.length - 1), (len) => {
        const named = damagedAt(file.subarray(0, len));
        expect(named).toBeGreaterThan(0);
        const whole = text.slice(0, len).split('\n').length;
        expect(named).toBeLessThanOrEqual(whole);
      }),
      { numRuns: 300 },
    );
  });
});

describe('metrics', () => {
  it('the Grafana dashboard queries only metrics the services define, and shows every one of them', async () => {
    const dashboard = readFileSync(join(PROJECT_ROOT, 'docs', 'grafana-dashboard.json'), 'utf8');
    const queried = new Set([...dashboard.matchAll(/\b(capstan_[a-z_]+?)(?:_bucket|_count|_sum)?\b/g)].map((m) => m[1] as string));
    const defined = new Set((await metricsRegistry.getMetricsAsJSON()).map((m) => m.name));
    expect([...queried].filter((n) => !defined.has(n))).toEqual([]);
    expect([...defined].filter((n) => !queried.has(n))).toEqual([]);
  });
});
