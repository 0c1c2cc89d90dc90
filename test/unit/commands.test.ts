import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  CapstanError,
  COMMAND_VERBS,
  CommandVerb,
  ErrorCode,
  LIMITS,
  PayloadTooLargeError,
  SchemaError,
  encodedSize,
  isCommandVerb,
  makeRunId,
  parseCommand,
  type CommandVerb as Verb,
} from '@capstan/schemas';

const RUN = makeRunId(1_700_000_000_000, new Uint8Array(10).fill(9));

const VALID: Record<Verb, Record<string, unknown>> = {
  submit: { workflow: 'demo.pipeline', input: { n: 1 }, runId: RUN, idempotencyKey: 'order-42' },
  cancel: { runId: RUN, reason: 'operator asked' },
  signal: { runId: RUN, name: 'approve', payload: { by: 'ann', ok: true } },
  started: { runId: RUN, step: 'extract', attempt: 1, worker: 'worker-1' },
  result: { runId: RUN, step: 'extract', attempt: 2, worker: 'worker-1', outcome: 'completed', result: { rows: 10 }, durationMs: 12 },
  timer: { runId: RUN, timerId: 'extract-a1-timeout', kind: 'timeout', step: 'extract', attempt: 1 },
  approve: { runId: RUN, step: 'review', by: 'ann@example.com', reason: 'numbers checked' },
  deny: { runId: RUN, step: 'review', by: 'Ann Lee', reason: 'totals do not add up' },
  retry: { runId: RUN, by: 'ann', reason: 'upstream fixed' },
  policy: { runId: RUN, step: 'publish', attempt: 1, decision: 'needs-approval', version: 4, policies: ['policy0'], approvers: 'security', expiresInMs: 60_000 },
  credential: { runId: RUN, step: 'agent', attempt: 1, name: 'API_KEY', reason: 'call the API', decision: 'allow', version: 2, policies: ['p1'] },
  child: { runId: RUN, step: 'ship', attempt: 1, child: RUN, outcome: 'failed', error: { code: 'child_failed', message: 'x', retryable: true } },
};

const MINIMAL: Record<Verb, Record<string, unknown>> = {
  submit: { workflow: 'w' },
  cancel: { runId: RUN },
  signal: { runId: RUN, name: 'go' },
  started: { runId: RUN, step: 's', attempt: 1000, worker: 'w' },
  result: { runId: RUN, step: 's', attempt: 1, worker: 'w', outcome: 'completed', durationMs: 0 },
  timer: { runId: RUN, timerId: 's-a1-retry', kind: 'retry', step: 's', attempt: 1 },
  // Who decides comes from the command's proof: `by` is optional (a console's or the admin's word for its user).
  approve: { runId: RUN, step: 's' },
  deny: { runId: RUN, step: 's' },
  retry: { runId: RUN },
  policy: { runId: RUN, step: 's', attempt: 1, decision: 'deny', version: 0, policies: [] },
  credential: { runId: RUN, step: 's', attempt: 1, name: 'K', reason: '', decision: 'deny', version: 0, policies: [] },
  child: { runId: RUN, step: 's', attempt: 1, child: RUN, outcome: 'completed' },
};

function schemaError(verb: Verb, value: unknown): SchemaError {
  try {
    parseCommand(verb, value, encodedSize);
  } catch (e) {
    expect(e).toBeInstanceOf(SchemaError);
    expect((e as SchemaError).code).toBe(ErrorCode.SchemaViolation);
    return e as SchemaError;
  }
  throw new Error(`${verb} ${JSON.stringify(value)} was accepted`);
}

describe('commands - verbs', () => {
  it('commands - the verbs are exactly the subject vocabulary', () => {
    expect([...COMMAND_VERBS].sort()).toEqual(Object.values(CommandVerb).sort());
    for (const v of COMMAND_VERBS) expect(isCommandVerb(v)).toBe(true);
    for (const v of ['', 'SUBMIT', 'approval', 'constructor', '__proto__', 'toString', 'hasOwnProperty', 'submit ']) {
      expect(isCommandVerb(v), v).toBe(false);
    }
  });
});

describe('commands - valid bodies', () => {
  for (const verb of COMMAND_VERBS) {
    it(`commands - ${verb}: a full body parses to itself`, () => {
      expect(parseCommand(verb, VALID[verb], encodedSize)).toEqual({ verb, body: VALID[verb] });
    });
    it(`commands - ${verb}: a minimal body parses, optional fields absent`, () => {
      const cmd = parseCommand(verb, MINIMAL[verb], encodedSize);
      expect(cmd.verb).toBe(verb);
      expect(cmd.body).toEqual(MINIMAL[verb]);
    });
  }

  it('commands - null optional fields are dropped, not kept', () => {
    const cmd = parseCommand('cancel', { runId: RUN, reason: null }, encodedSize);
    expect(cmd.body).toEqual({ runId: RUN });
    expect(Object.hasOwn(cmd.body, 'reason')).toBe(false);
  });

  it('commands - result failed with an error record parses', () => {
    const body = { ...MINIMAL.result, outcome: 'failed', error: { code: 'boom', message: 'it broke', retryable: true } };
    expect(parseCommand('result', body, encodedSize).body).toEqual(body);
  });

  it('commands - signal payload may be any JSON, including scalars and null', () => {
    for (const payload of [1, 'x', true, [1, 2], { a: { b: [null] } }]) {
      expect(parseCommand('signal', { runId: RUN, name: 'go', payload }, encodedSize).body).toEqual({ runId: RUN, name: 'go', payload });
    }
  });
});

describe('commands - invalid bodies', () => {
  const INVALID: [Verb, Record<string, unknown>, string][] = [
    ['submit', { input: {} }, 'workflow'],
    ['submit', { workflow: '' }, 'workflow'],
    ['submit', { workflow: 'w'.repeat(129) }, 'workflow'],
    ['submit', { workflow: 'w', input: [1] }, 'input'],
    ['submit', { workflow: 'w', input: 'x' }, 'input'],
    ['submit', { workflow: 'w', runId: 'not-a-ulid' }, 'runId'],
    ['submit', { workflow: 'w', idempotencyKey: '' }, 'idempotencyKey'],
    ['submit', { workflow: 'w', idempotencyKey: 'k'.repeat(257) }, 'idempotencyKey'],
    ['submit', { workflow: 7 }, 'workflow'],
    ['cancel', {}, 'runId'],
    ['cancel', { runId: RUN.toLowerCase() }, 'runId'],
    ['cancel', { runId: `8${RUN.slice(1)}` }, 'runId'],
    ['cancel', { runId: RUN, reason: 'r'.repeat(501) }, 'reason'],
    ['cancel', { runId: RUN, reason: 5 }, 'reason'],
    ['signal', { runId: RUN }, 'name'],
    ['signal', { runId: RUN, name: 'Approve' }, 'name'],
    ['signal', { runId: RUN, name: 'a.b' }, 'name'],
    ['signal', { runId: RUN, name: 'n'.repeat(65) }, 'name'],
    ['signal', { runId: RUN, name: 'go', payload: { a: Number.NaN } }, 'payload.a'],
    ['started', { runId: RUN, step: 's', attempt: 0, worker: 'w' }, 'attempt'],
    ['started', { runId: RUN, step: 's', attempt: 1001, worker: 'w' }, 'attempt'],
    ['started', { runId: RUN, step: 's', attempt: 1.5, worker: 'w' }, 'attempt'],
    ['started', { runId: RUN, step: 's', attempt: '1', worker: 'w' }, 'attempt'],
    ['started', { runId: RUN, step: 'S', attempt: 1, worker: 'w' }, 'step'],
    ['started', { runId: RUN, step: '', attempt: 1, worker: 'w' }, 'step'],
    ['started', { runId: RUN, step: 's', attempt: 1, worker: '' }, 'worker'],
    ['started', { runId: RUN, step: 's', attempt: 1 }, 'worker'],
    ['result', { ...MINIMAL.result, outcome: 'ok' }, 'outcome'],
    ['result', { ...MINIMAL.result, durationMs: -1 }, 'durationMs'],
    ['result', { ...MINIMAL.result, durationMs: undefined }, 'durationMs'],
    ['result', { ...MINIMAL.result, outcome: 'failed', error: { code: 'x', message: 'y' } }, 'error.retryable'],
    ['result', { ...MINIMAL.result, outcome: 'failed', error: { code: '', message: 'y', retryable: true } }, 'error.code'],
    ['result', { ...MINIMAL.result, outcome: 'failed', error: { code: 'x', message: 'y', retryable: true, stack: 'z' } }, 'error.stack'],
    ['timer', { ...MINIMAL.timer, kind: 'nap' }, 'kind'],
    ['timer', { ...MINIMAL.timer, timerId: 'a.b' }, 'timerId'],
    ['timer', { ...MINIMAL.timer, timerId: '' }, 'timerId'],
    ['timer', { ...MINIMAL.timer, attempt: 0 }, 'attempt'],
    ['approve', { ...MINIMAL.approve, by: '' }, 'by'],
    ['approve', { ...MINIMAL.approve, by: ' ann' }, 'by'],
    ['approve', { ...MINIMAL.approve, by: 'ann\n' }, 'by'],
    ['approve', { ...MINIMAL.approve, by: 'a'.repeat(129) }, 'by'],
    ['approve', { ...MINIMAL.approve, groups: ['Finance'] }, 'groups[0]'],
    ['approve', { ...MINIMAL.approve, step: 'Review' }, 'step'],
    ['deny', { ...MINIMAL.deny, reason: '' }, 'reason'],
    ['deny', { ...MINIMAL.deny, reason: 'r'.repeat(501) }, 'reason'],
    ['deny', { ...MINIMAL.deny, decision: 'approve' }, 'decision'],
    ['retry', { ...MINIMAL.retry, by: 7 }, 'by'],
    ['retry', { ...MINIMAL.retry, step: 's' }, 'step'],
  ];
  for (const [verb, body, path] of INVALID) {
    it(`commands - ${verb}: ${JSON.stringify(body).slice(0, 80)} is refused at ${path}`, () => {
      expect(schemaError(verb, body).path).toBe(path);
    });
  }

  for (const verb of COMMAND_VERBS) {
    it(`commands - ${verb}: non-object bodies are refused`, () => {
      for (const v of [null, undefined, 1, 'x', [VALID[verb]], new Date(0), new Map()]) expect(schemaError(verb, v).path).toBe('');
    });

    it(`commands - ${verb}: unknown fields are refused, including Object.prototype names`, () => {
      for (const extra of ['extra', 'runid', 'constructor', 'toString', 'hasOwnProperty', 'valueOf', '__proto__']) {
        const body: Record<string, unknown> = { ...VALID[verb] };
        Object.defineProperty(body, extra, { value: 1, enumerable: true, configurable: true, writable: true });
        expect(schemaError(verb, body).path, extra).toBe(extra);
      }
    });

    it(`commands - ${verb}: each required field is required`, () => {
      const required = Object.keys(MINIMAL[verb]);
      for (const k of required) {
        const body = { ...MINIMAL[verb] };
        delete body[k];
        expect(schemaError(verb, body).path, k).toBe(k);
      }
    });
  }

  it('commands - result failed without an error is a schema violation', () => {
    const e = schemaError('result', { ...MINIMAL.result, outcome: 'failed' });
    expect(e.path).toBe('error');
    expect(e.code).toBe('schema_violation');
    const nulled = schemaError('result', { ...MINIMAL.result, outcome: 'failed', error: null });
    expect(nulled.path).toBe('error');
  });

  it('commands - JSON payloads deeper than 32 levels are refused', () => {
    let deep: unknown = 1;
    for (let i = 0; i < 40; i++) deep = { d: deep };
    expect(schemaError('submit', { workflow: 'w', input: deep }).problem).toContain('nested deeper');
    let ok: unknown = 1;
    for (let i = 0; i < 30; i++) ok = [ok];
    expect(parseCommand('signal', { runId: RUN, name: 'go', payload: ok }, encodedSize).verb).toBe('signal');
  });
});

describe('commands - size caps', () => {
  /** An object whose encoded size is exactly `bytes`. */
  function sized(bytes: number): { pad: string } {
    let n = Math.max(0, bytes - 16);
    while (encodedSize({ pad: 'x'.repeat(n) }) < bytes) n++;
    const v = { pad: 'x'.repeat(n) };
    expect(encodedSize(v)).toBe(bytes);
    return v;
  }

  const CAPS: [Verb, string, number, (v: unknown) => Record<string, unknown>][] = [
    ['submit', 'input', LIMITS.inputBytes, (v) => ({ workflow: 'w', input: v })],
    ['result', 'result', LIMITS.resultBytes, (v) => ({ ...MINIMAL.result, result: v })],
    ['signal', 'payload', LIMITS.signalBytes, (v) => ({ runId: RUN, name: 'go', payload: v })],
  ];
  for (const [verb, field, limit, body] of CAPS) {
    it(`commands - ${verb}.${field}: exactly ${limit} bytes passes, one more is payload_too_large`, () => {
      expect(parseCommand(verb, body(sized(limit)), encodedSize).verb).toBe(verb);
      let caught: unknown;
      try {
        parseCommand(verb, body(sized(limit + 1)), encodedSize);
      } catch (e) {
        caught = e;
      }
      expect(caught).toBeInstanceOf(PayloadTooLargeError);
      const e = caught as PayloadTooLargeError;
      expect(e.code).toBe(ErrorCode.PayloadTooLarge);
      expect(e.what).toBe(`${verb}.${field}`);
      expect(e.size).toBe(limit + 1);
      expect(e.limit).toBe(limit);
    });
  }

  it('commands - submit input well over 64 KiB is payload_too_large', () => {
    const input = { rows: Array.from({ length: 5000 }, (_, i) => ({ i, s: 'abcdefghij' })) };
    expect(encodedSize(input)).toBeGreaterThan(64 * 1024);
    expect(() => parseCommand('submit', { workflow: 'w', input }, encodedSize)).toThrow(PayloadTooLargeError);
  });

  it('commands - sizes are measured with the caller-supplied function, per capped field only', () => {
    const seen: unknown[] = [];
    const sizeOf = (v: unknown) => {
      seen.push(v);
      return 1;
    };
    parseCommand('result', VALID.result, sizeOf);
    expect(seen).toEqual([VALID.result['result']]);
    seen.length = 0;
    parseCommand('cancel', VALID.cancel, sizeOf);
    expect(seen).toEqual([]);
    expect(() => parseCommand('signal', VALID.signal, () => LIMITS.signalBytes + 1)).toThrow(PayloadTooLargeError);
  });

  it('commands - property: arbitrary bodies parse or throw a CapstanError', () => {
    const body = fc.oneof(
      fc.anything({ maxDepth: 3 }),
      fc.record({ runId: fc.constantFrom(RUN, 'x'), step: fc.string(), attempt: fc.integer(), worker: fc.string(), outcome: fc.string() }, { requiredKeys: [] }),
    );
    fc.assert(
      fc.property(fc.constantFrom(...COMMAND_VERBS), body, (verb, value) => {
        try {
          const cmd = parseCommand(verb, value, encodedSize);
          expect(cmd.verb).toBe(verb);
        } catch (e) {
          expect(CapstanError.is(e), String(e)).toBe(true);
        }
      }),
      { numRuns: 2000 },
    );
  });
});
