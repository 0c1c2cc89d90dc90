import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  CapstanError,
  COMMAND_VERBS,
  Consumers,
  DeadLetterSource,
  ErrorCode,
  Headers,
  InvalidNameError,
  MsgIds,
  Streams,
  Subjects,
  TENANT_ID_PATTERN,
  TimerKind,
  TriggerVerb,
  isTenantId,
  makeRunId,
  parseTenantId,
  parseToken,
  runIdOfSubject,
  tenantTokenOf,
  type RunId,
  type TenantId,
} from '@capstan/schemas';
import { timerId } from '@capstan/actors';
import { idempotencyHash, seenStreamConfig, streamConfigs as runPipelineStreams, triggersStreamConfig } from '@capstan/kit';

/** The run pipeline's streams and the triggers' (schedules, routes, webhook ids seen). */
const streamConfigs = (t: TenantId) => [...runPipelineStreams(t), triggersStreamConfig(t), seenStreamConfig(t)];

/** NATS subject matching: `*` matches exactly one token, `>` (last) one or more. */
function matches(filter: string, subject: string): boolean {
  const f = filter.split('.');
  const s = subject.split('.');
  for (let i = 0; i < f.length; i++) {
    const tok = f[i];
    if (tok === '>') return i === f.length - 1 && s.length > i;
    if (i >= s.length) return false;
    if (tok !== '*' && tok !== s[i]) return false;
  }
  return f.length === s.length;
}

/** Whether some subject matches both filters (NATS refuses overlapping stream subjects). */
function overlap(a: string, b: string): boolean {
  const x = a.split('.');
  const y = b.split('.');
  for (let i = 0; ; i++) {
    const p = x[i];
    const q = y[i];
    if (p === '>' || q === '>') return p !== undefined && q !== undefined;
    if (p === undefined || q === undefined) return p === q;
    if (p !== '*' && q !== '*' && p !== q) return false;
  }
}

describe('names - wildcard matcher used by these tests', () => {
  it('names - matcher follows NATS semantics', () => {
    expect(matches('a.*.c', 'a.b.c')).toBe(true);
    expect(matches('a.*.c', 'a.b.d')).toBe(false);
    expect(matches('a.*', 'a.b.c')).toBe(false);
    expect(matches('a.>', 'a.b.c')).toBe(true);
    expect(matches('a.>', 'a')).toBe(false);
    expect(matches('a.b', 'a.b')).toBe(true);
    expect(matches('a.b', 'a.b.c')).toBe(false);
    expect(overlap('a.*.c', 'a.b.>')).toBe(true);
    expect(overlap('a.b.*', 'a.c.*')).toBe(false);
    expect(overlap('a.*', 'a.b.c')).toBe(false);
  });
});

const SAMPLE_TENANTS = ['acme', 'a', 'x-1-b', 'abcdefghijklmnopqrstuvwxyz012345', '0', 'a--b', 'z9-'].map((t) => parseTenantId(t));
const RUN_A: RunId = makeRunId(1_700_000_000_000, new Uint8Array(10).fill(7));
const RUN_B: RunId = makeRunId(0, new Uint8Array(10));
const RUN_MAX: RunId = makeRunId(2 ** 48 - 1, new Uint8Array(10).fill(255));

type StreamName = 'runs' | 'commands' | 'work' | 'deadLetters' | 'triggers' | 'seen';

interface Built {
  readonly what: string;
  readonly subject: string;
  /** The stream that must capture it; `null` for core-NATS subjects that no stream stores. */
  readonly stream: StreamName | null;
  readonly tokens: number;
}

/** Every concrete subject the platform builds for a tenant, with the stream that stores it. */
function everySubject(t: TenantId): Built[] {
  const out: Built[] = [];
  for (const runId of [RUN_A, RUN_B, RUN_MAX]) {
    out.push({ what: `run ${runId}`, subject: Subjects.run(t, runId), stream: 'runs', tokens: 4 });
    for (const kind of [TimerKind.Retry, TimerKind.Timeout]) {
      for (const [step, attempt] of [
        ['extract', 1],
        ['a', 1000],
        ['x'.repeat(50), 1000],
      ] as const) {
        const id = timerId(step, attempt, kind);
        out.push({ what: `timer ${id}`, subject: Subjects.timer(t, runId, id), stream: 'commands', tokens: 5 });
      }
    }
  }
  for (const key of ['order-1', 'a key with spaces', 'ünïcode.*>']) {
    out.push({ what: `idempotency ${key}`, subject: Subjects.idempotency(t, idempotencyHash(t, key)), stream: 'runs', tokens: 4 });
  }
  for (const verb of COMMAND_VERBS) out.push({ what: `command ${verb}`, subject: Subjects.command(t, verb), stream: 'commands', tokens: 4 });
  for (const pool of ['default', 'gpu', 'p_1-x', 'z'.repeat(64)]) {
    out.push({ what: `work ${pool}`, subject: Subjects.work(t, pool), stream: 'work', tokens: 4 });
  }
  for (const source of Object.values(DeadLetterSource)) {
    out.push({ what: `dlq ${source}`, subject: Subjects.deadLetter(t, source), stream: 'deadLetters', tokens: 4 });
  }
  out.push({ what: 'worker heartbeat', subject: Subjects.workerHeartbeat(t), stream: null, tokens: 5 });
  for (const verb of Object.values(TriggerVerb)) out.push({ what: `trigger command ${verb}`, subject: Subjects.triggerCommand(t, verb), stream: 'commands', tokens: 4 });
  for (const id of ['nightly', 'a', 'z'.repeat(64), 'x_1-y']) {
    out.push({ what: `schedule wake-up ${id}`, subject: Subjects.scheduleWake(t, id), stream: 'commands', tokens: 5 });
    out.push({ what: `schedule ${id}`, subject: Subjects.schedule(t, id), stream: 'triggers', tokens: 4 });
    out.push({ what: `schedule state ${id}`, subject: Subjects.scheduleState(t, id), stream: 'triggers', tokens: 4 });
    out.push({ what: `route ${id}`, subject: Subjects.route(t, id), stream: 'triggers', tokens: 4 });
  }
  out.push({ what: 'webhook id seen', subject: Subjects.seenDelivery(t, 'ab'.repeat(20)), stream: 'seen', tokens: 4 });
  out.push({ what: 'workflow catalog', subject: Subjects.workflowCatalog(t), stream: null, tokens: 5 });
  return out;
}

function streamsOf(t: TenantId): Map<StreamName, { name: string; subjects: string[] }> {
  const cfgs = streamConfigs(t);
  const byName = new Map(cfgs.map((c) => [c.name, c]));
  const get = (name: string) => {
    const c = byName.get(name);
    if (!c) throw new Error(`no stream config ${name}`);
    return { name: c.name, subjects: [...(c.subjects ?? [])] };
  };
  expect(cfgs).toHaveLength(6);
  return new Map<StreamName, { name: string; subjects: string[] }>([
    ['runs', get(Streams.runs(t))],
    ['commands', get(Streams.commands(t))],
    ['work', get(Streams.work(t))],
    ['deadLetters', get(Streams.deadLetters(t))],
    ['triggers', get(Streams.triggers(t))],
    ['seen', get(Streams.seen(t))],
  ]);
}

const WILDCARD_BUILDERS = [
  'allRuns',
  'allIdempotency',
  'allCommands',
  'allTimers',
  'allWork',
  'allDeadLetters',
  'allSchedules',
  'allScheduleStates',
  'allRoutes',
  'allSeen',
] as const;

describe('names - subjects against stream filters', () => {
  for (const t of SAMPLE_TENANTS) {
    it(`names - every subject of tenant ${JSON.stringify(t)} is captured by exactly its own stream`, () => {
      const streams = streamsOf(t);
      const built = everySubject(t);
      expect(built.length).toBeGreaterThan(20);
      for (const b of built) {
        const capturing = [...streams].filter(([, s]) => s.subjects.some((f) => matches(f, b.subject))).map(([k]) => k);
        if (b.stream === null) expect(capturing, b.what).toEqual([]);
        else expect(capturing, `${b.what}: ${b.subject}`).toEqual([b.stream]);
        // One permission `cap.<t>.>` fences the tenant, and it is the second token everywhere.
        expect(matches(`cap.${t}.>`, b.subject), b.what).toBe(true);
        expect(tenantTokenOf(b.subject)).toBe(t);
        expect(b.subject.split('.'), b.what).toHaveLength(b.tokens);
        expect(b.subject, b.what).not.toMatch(/[*>\s]/);
        expect(
          b.subject.split('.').every((tok) => tok.length > 0),
          b.what,
        ).toBe(true);
      }
    });

    it(`names - no subject of tenant ${JSON.stringify(t)} is captured by another tenant's streams or permission`, () => {
      for (const other of SAMPLE_TENANTS) {
        if (other === t) continue;
        const filters = streamConfigs(other).flatMap((c) => c.subjects ?? []);
        for (const b of everySubject(t)) {
          expect(
            filters.filter((f) => matches(f, b.subject)),
            `${b.subject} vs tenant ${other}`,
          ).toEqual([]);
          expect(matches(`cap.${other}.>`, b.subject)).toBe(false);
        }
        // Stream filters never overlap across tenants (one server holds every tenant's streams).
        for (const f of streamConfigs(t).flatMap((c) => c.subjects ?? [])) {
          for (const g of filters) expect(overlap(f, g), `${f} / ${g}`).toBe(false);
        }
      }
    });
  }

  it('names - the stream filters of one tenant never overlap each other', () => {
    for (const t of SAMPLE_TENANTS) {
      const cfgs = streamConfigs(t);
      for (const a of cfgs) {
        for (const b of cfgs) {
          if (a === b) continue;
          for (const f of a.subjects ?? []) {
            for (const g of b.subjects ?? []) expect(overlap(f, g), `${a.name}:${f} / ${b.name}:${g}`).toBe(false);
          }
        }
      }
    }
  });

  it('names - stream filters are exactly the wildcard builders', () => {
    for (const t of SAMPLE_TENANTS) {
      const s = streamsOf(t);
      expect(s.get('runs')?.subjects).toEqual([Subjects.allRuns(t), Subjects.allIdempotency(t)]);
      expect(s.get('commands')?.subjects).toEqual([Subjects.allCommands(t), Subjects.allTimers(t)]);
      expect(s.get('work')?.subjects).toEqual([Subjects.allWork(t)]);
      expect(s.get('deadLetters')?.subjects).toEqual([Subjects.allDeadLetters(t)]);
      expect(s.get('triggers')?.subjects).toEqual([Subjects.allSchedules(t), Subjects.allScheduleStates(t), Subjects.allRoutes(t)]);
      expect(s.get('seen')?.subjects).toEqual([Subjects.allSeen(t)]);
    }
  });

  it('names - wildcard builders are the only ones with wildcards, and only in the last token', () => {
    for (const t of SAMPLE_TENANTS) {
      for (const name of WILDCARD_BUILDERS) {
        const subject = Subjects[name](t);
        const tokens = subject.split('.');
        expect(tokens[0]).toBe('cap');
        expect(tokens[1]).toBe(t);
        expect(['*', '>']).toContain(tokens.at(-1));
        expect(tokens.slice(0, -1).join('.'), name).not.toMatch(/[*>\s]/);
      }
    }
    expect(Subjects.allRuns(SAMPLE_TENANTS[0] as TenantId)).toBe('cap.acme.runs.*');
    expect(Subjects.allTimers(SAMPLE_TENANTS[0] as TenantId)).toBe('cap.acme.timers.>');
  });

  it("names - a service's request wildcard and the credential routes capture only their own tenant's subjects", () => {
    for (const t of SAMPLE_TENANTS) {
      const policy = Subjects.svcVerbs(t, 'policy');
      expect(policy).toBe(`cap.${t}.svc.policy.*`);
      expect(matches(policy, Subjects.policy(t, 'decide'))).toBe(true);
      expect(matches(Subjects.allJitRoutes(t), Subjects.jitRoute(t, 'r1'))).toBe(true);
      for (const other of SAMPLE_TENANTS.filter((o) => o !== t)) {
        for (const b of everySubject(other)) {
          expect(matches(policy, b.subject), b.subject).toBe(false);
          expect(matches(Subjects.allJitRoutes(t), b.subject), b.subject).toBe(false);
        }
      }
    }
    expect(() => Subjects.jitRoute('acme' as TenantId, 'Not A Token')).toThrow(/credential route/);
  });

  it('names - spelled subjects match the documented layout', () => {
    const t = parseTenantId('acme');
    expect(Subjects.run(t, RUN_A)).toBe(`cap.acme.runs.${RUN_A}`);
    expect(Subjects.command(t, 'cancel')).toBe('cap.acme.cmd.cancel');
    expect(Subjects.timer(t, RUN_A, 'x-a1-retry')).toBe(`cap.acme.timers.${RUN_A}.x-a1-retry`);
    expect(Subjects.work(t, 'gpu')).toBe('cap.acme.work.gpu');
    expect(Subjects.deadLetter(t, 'cmd')).toBe('cap.acme.dlq.cmd');
    expect(Subjects.workerHeartbeat(t)).toBe('cap.acme.svc.workers.heartbeat');
    expect(Subjects.idempotency(t, 'ab12')).toBe('cap.acme.idem.ab12');
  });

  it('names - run id and tenant read back out of subjects', () => {
    for (const t of SAMPLE_TENANTS) {
      expect(runIdOfSubject(Subjects.run(t, RUN_A))).toBe(RUN_A);
      expect(runIdOfSubject(Subjects.command(t, 'submit'))).toBeUndefined();
      expect(runIdOfSubject(Subjects.timer(t, RUN_A, 'a-a1-retry'))).toBeUndefined();
    }
    expect(runIdOfSubject(`nope.acme.runs.${RUN_A}`)).toBeUndefined();
    expect(tenantTokenOf('other.acme.runs.x')).toBeUndefined();
  });
});

describe('names - streams, consumers, message ids, headers', () => {
  it('names - stream names are safe, distinct per tenant and kind, and the tenant reads back', () => {
    const seen = new Set<string>();
    for (const t of SAMPLE_TENANTS) {
      for (const name of [Streams.runs(t), Streams.commands(t), Streams.work(t), Streams.deadLetters(t)]) {
        expect(name).toMatch(/^[-\w]+$/);
        expect(name.length).toBeLessThanOrEqual(64);
        expect(seen.has(name), name).toBe(false);
        seen.add(name);
      }
      expect(Streams.commands(t).startsWith(Streams.commandsPrefix)).toBe(true);
      expect(Streams.commands(t).slice(Streams.commandsPrefix.length)).toBe(t);
      for (const c of streamConfigs(t)) expect(c.name).toMatch(/^[-\w]+$/);
    }
    expect(seen.size).toBe(SAMPLE_TENANTS.length * 4);
  });

  it('names - consumer names are safe durable names', () => {
    expect(Consumers.orchestrator).toMatch(/^[-\w]+$/);
    for (const pool of ['default', 'gpu', 'p_1-x', 'z'.repeat(64)]) {
      expect(Consumers.workPool(pool)).toBe(`work-${pool}`);
      expect(Consumers.workPool(pool)).toMatch(/^[-\w]+$/);
    }
    expect(new Set(['default', 'gpu'].map((p) => Consumers.workPool(p))).size).toBe(2);
  });

  it('names - message ids are deterministic, distinct per kind, and free of whitespace', () => {
    const ids = [
      MsgIds.event(RUN_A, 1),
      MsgIds.event(RUN_A, 2),
      MsgIds.event(RUN_B, 1),
      MsgIds.work(RUN_A, 'extract', 1),
      MsgIds.work(RUN_A, 'extract', 2),
      MsgIds.timer(RUN_A, 'extract-a1-timeout'),
      MsgIds.timer(RUN_A, 'extract-a1-retry'),
      MsgIds.command('submit', 'k'),
      MsgIds.command('cancel', 'k'),
    ];
    expect(new Set(ids).size).toBe(ids.length);
    for (const id of ids) expect(id).not.toMatch(/\s/);
    expect(MsgIds.event(RUN_A, 3)).toBe(`${RUN_A}:3`);
    expect(MsgIds.event(RUN_A, 3)).toBe(MsgIds.event(RUN_A, 3));
  });

  it('names - headers are valid header names and NATS ones keep their exact spelling', () => {
    for (const h of Object.values(Headers)) expect(h).toMatch(/^[A-Za-z][A-Za-z-]*$/);
    expect(Headers.MsgId).toBe('Nats-Msg-Id');
    expect(Headers.ExpectedLastSubjectSeq).toBe('Nats-Expected-Last-Subject-Sequence');
    const ours = Object.values(Headers).filter((h) => !h.startsWith('Nats-') && h !== 'traceparent');
    for (const h of ours) expect(h.startsWith('Capstan-'), h).toBe(true);
    expect(new Set(Object.values(Headers)).size).toBe(Object.values(Headers).length);
  });
});

describe('names - invalid names never become subjects', () => {
  const t = parseTenantId('acme');
  const BAD_TENANTS: unknown[] = [
    'ACME',
    'Acme',
    'a.b',
    'a*',
    '*',
    '>',
    'a>',
    'a b',
    ' a',
    'a ',
    '',
    'a'.repeat(33),
    '-a',
    '-',
    'a_b',
    'ünï',
    'a\u0000',
    'a\n',
    'tenant\u200b',
    '🦀',
  ];

  for (const bad of BAD_TENANTS) {
    it(`names - tenant id ${JSON.stringify(bad)} is rejected with invalid_tenant_id`, () => {
      expect(isTenantId(bad)).toBe(false);
      let caught: unknown;
      try {
        parseTenantId(bad);
      } catch (e) {
        caught = e;
      }
      expect(caught).toBeInstanceOf(InvalidNameError);
      expect(CapstanError.is(caught)).toBe(true);
      expect((caught as InvalidNameError).code).toBe(ErrorCode.InvalidTenantId);
      expect((caught as InvalidNameError).kind).toBe('tenant id');
    });
  }

  it('names - non-string tenant ids are rejected with a typed error, never a TypeError', () => {
    const hostile = Object.create(null) as object;
    for (const bad of [undefined, null, 42, true, ['acme'], { toString: () => 'acme' }, hostile, { toString: 1 }, Symbol('x')]) {
      expect(() => parseTenantId(bad)).toThrow(InvalidNameError);
      try {
        parseTenantId(bad);
      } catch (e) {
        expect((e as InvalidNameError).code).toBe(ErrorCode.InvalidTenantId);
      }
    }
  });

  it('names - boundary tenant ids: 1 and 32 characters are valid', () => {
    expect(parseTenantId('a')).toBe('a');
    expect(parseTenantId('a'.repeat(32))).toBe('a'.repeat(32));
    expect(parseTenantId('9-')).toBe('9-');
  });

  it('names - subject tokens from our vocabulary are validated with invalid_name', () => {
    const calls: (() => unknown)[] = [
      () => Subjects.work(t, 'Bad'),
      () => Subjects.work(t, 'a.b'),
      () => Subjects.work(t, '*'),
      () => Subjects.work(t, '>'),
      () => Subjects.work(t, ''),
      () => Subjects.work(t, 'a b'),
      () => Subjects.work(t, '-a'),
      () => Subjects.work(t, 'a'.repeat(65)),
      () => Subjects.timer(t, RUN_A, 'a.b'),
      () => Subjects.timer(t, RUN_A, 'x>'),
      () => Subjects.idempotency(t, 'x y'),
      () => Subjects.idempotency(t, 'AB'),
      () => Consumers.workPool('a.b'),
      () => Consumers.workPool('*'),
      () => parseToken('pool', 42),
      () => parseToken('pool', Object.create(null)),
    ];
    for (const call of calls) {
      let caught: unknown;
      try {
        call();
      } catch (e) {
        caught = e;
      }
      expect(caught, call.toString()).toBeInstanceOf(InvalidNameError);
      expect((caught as InvalidNameError).code).toBe(ErrorCode.InvalidName);
    }
  });

  it('names - property: any string parses to a valid tenant id or throws a CapstanError', () => {
    const candidates = fc.oneof(fc.string({ unit: 'binary', maxLength: 40 }), fc.string({ unit: 'grapheme', maxLength: 40 }), fc.stringMatching(/^[a-zA-Z0-9.*> _-]{0,36}$/));
    fc.assert(
      fc.property(candidates, (s) => {
        let parsed: string | undefined;
        try {
          parsed = parseTenantId(s);
        } catch (e) {
          expect(CapstanError.is(e)).toBe(true);
          expect((e as CapstanError).code).toBe(ErrorCode.InvalidTenantId);
          expect(TENANT_ID_PATTERN.test(s)).toBe(false);
          return;
        }
        expect(parsed).toBe(s);
        expect(parsed).toMatch(/^[a-z0-9][a-z0-9-]{0,31}$/);
      }),
      { numRuns: 2000 },
    );
  });

  it('names - property: a valid tenant id never yields a subject with more tokens than expected', () => {
    fc.assert(
      fc.property(fc.stringMatching(/^[a-z0-9][a-z0-9-]{0,31}$/), (raw) => {
        const tid = parseTenantId(raw);
        for (const b of everySubject(tid)) {
          expect(b.subject.split('.')).toHaveLength(b.tokens);
          expect(b.subject.split('.')[1]).toBe(tid);
          expect(b.subject).not.toMatch(/[*>\s]/);
        }
        for (const name of WILDCARD_BUILDERS) {
          expect(Subjects[name](tid).split('.')).toHaveLength(4);
        }
        for (const c of streamConfigs(tid)) expect(c.name).toMatch(/^[-\w]+$/);
      }),
      { numRuns: 300 },
    );
  });
});
