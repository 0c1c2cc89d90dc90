import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  CapstanError,
  COMMAND_VERBS,
  DecodeError,
  ErrorCode,
  LIMITS,
  PayloadTooLargeError,
  SchemaError,
  decode,
  encode,
  encodedSize,
  isPlainObject,
  makeRunId,
  parseCommand,
  parseRunEvent,
} from '@capstan/schemas';

const RUN = makeRunId(1_700_000_000_000, new Uint8Array(10).fill(3));
const utf8 = (s: string) => new TextEncoder().encode(s);

/** Runs `fn` and returns what it threw (failing the test when it did not throw). */
function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
}

function expectCode(fn: () => unknown, cls: new (...a: never[]) => CapstanError, code: string): CapstanError {
  const e = thrown(fn);
  expect(e).toBeInstanceOf(cls);
  expect(CapstanError.is(e)).toBe(true);
  expect((e as CapstanError).code).toBe(code);
  return e as CapstanError;
}

/** Every own property of Object.prototype, to prove nothing was polluted. */
const protoSnapshot = () => Object.getOwnPropertyNames(Object.prototype).sort().join(',');
let protoBefore = '';
beforeAll(() => {
  protoBefore = protoSnapshot();
});
afterAll(() => {
  expect(protoSnapshot()).toBe(protoBefore);
  expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
});

/** JSON-shaped values without `__proto__` keys (msgpackr renames those on purpose). */
const jsonish = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small' },
    fc.constant(null),
    fc.boolean(),
    fc.integer({ min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER }),
    fc.double({ noNaN: true, noDefaultInfinity: true }).filter((d) => !Object.is(d, -0)),
    fc.string({ unit: 'grapheme', maxLength: 20 }),
    fc.array(tie('value'), { maxLength: 5 }),
    tie('object'),
  ),
  object: fc.dictionary(
    fc.string({ maxLength: 10 }).filter((k) => k !== '__proto__'),
    tie('value'),
    { maxKeys: 5 },
  ),
}));
const topObject = jsonish.object as fc.Arbitrary<Record<string, unknown>>;

describe('codec - round trip', () => {
  it('codec - encode/decode round-trips a command-shaped object', () => {
    const value = { runId: RUN, step: 'extract', attempt: 2, worker: 'w-1', nested: { a: [1, 'two', null, true, 1.5] }, uni: 'ünï 🦀' };
    const bytes = encode(value);
    expect(bytes).toBeInstanceOf(Uint8Array);
    expect(bytes[0]).not.toBe(0x7b);
    expect(decode(bytes)).toEqual(value);
    expect(encodedSize(value)).toBe(bytes.length);
  });

  it('codec - property: any JSON-shaped object round-trips through MessagePack and JSON', () => {
    fc.assert(
      fc.property(topObject, (value) => {
        const viaMsgpack = decode(encode(value));
        expect(viaMsgpack).toEqual(value);
        expect(isPlainObject(viaMsgpack)).toBe(true);
        const viaJson = decode(utf8(JSON.stringify(value)));
        expect(viaJson).toEqual(JSON.parse(JSON.stringify(value)));
      }),
      { numRuns: 500 },
    );
  });

  it('codec - a MessagePack map is an object, whatever the encoder called it', () => {
    expect(
      decode(
        encode(
          new Map<string, unknown>([
            ['a', 1],
            ['b', [true]],
          ]),
        ),
      ),
    ).toEqual({ a: 1, b: [true] });
  });

  it('codec - large integers and unicode keys survive', () => {
    const value = { big: Number.MAX_SAFE_INTEGER, neg: Number.MIN_SAFE_INTEGER, u32: 2 ** 32 + 1, ключ: 'значение', '': 'empty key' };
    expect(decode(encode(value))).toEqual(value);
  });

  it('codec - a stored run event decodes and validates on its own', () => {
    const event = { v: 1, type: 'step.started', runId: RUN, seq: 2, at: 1, causationId: 'cmd:1', data: { step: 'a', attempt: 1, worker: 'w' } };
    expect(parseRunEvent(decode(encode(event)))).toEqual(event);
  });
});

describe('codec - JSON intake', () => {
  it('codec - JSON objects are accepted, with leading whitespace too', () => {
    const body = { runId: RUN, reason: 'stop' };
    expect(decode(utf8(JSON.stringify(body)))).toEqual(body);
    expect(decode(utf8(` \n\t\r${JSON.stringify(body)}`))).toEqual(body);
    expect(decode(utf8(JSON.stringify(body, null, 2)))).toEqual(body);
    expect(parseCommand('cancel', decode(utf8(JSON.stringify(body))), encodedSize)).toEqual({ verb: 'cancel', body });
  });

  it('codec - invalid JSON is a DecodeError naming JSON', () => {
    for (const s of ['{', '{"a":', '{a:1}', "{'a':1}", '{"a":1,}', '{"a":1} trailing', '{"a":NaN}']) {
      const e = expectCode(() => decode(utf8(s)), DecodeError, ErrorCode.DecodeFailed);
      expect(e.message, s).toContain('invalid JSON');
      expect(e.retryable).toBe(false);
    }
  });

  it('codec - JSON that is not valid UTF-8 is a DecodeError', () => {
    const bytes = new Uint8Array([...utf8('{"a":"'), 0xff, 0xfe, ...utf8('"}')]);
    expectCode(() => decode(bytes), DecodeError, ErrorCode.DecodeFailed);
  });
});

describe('codec - hostile and malformed input', () => {
  it('codec - empty payload is a DecodeError', () => {
    const e = expectCode(() => decode(new Uint8Array(0)), DecodeError, ErrorCode.DecodeFailed);
    expect(e.message).toContain('empty');
  });

  it('codec - garbage bytes are DecodeErrors', () => {
    const cases = [
      new Uint8Array([0xc1]), // never used in MessagePack
      new Uint8Array([0xc1, 0x00, 0x01]),
      new Uint8Array([0x81]), // a map with one entry and nothing in it
      new Uint8Array([0xdf, 0xff, 0xff, 0xff, 0xff]), // a map claiming 4 billion entries
      new Uint8Array([0xdd, 0xff, 0xff, 0xff, 0xff]), // an array claiming 4 billion items
      encode({ runId: RUN, reason: 'x' }).slice(0, 5), // truncated
      utf8('   '),
      utf8('\n'),
    ];
    for (const bytes of cases) {
      const e = thrown(() => decode(bytes));
      expect(e, Array.from(bytes).join(',')).toBeInstanceOf(DecodeError);
      expect((e as CapstanError).code).toBe(ErrorCode.DecodeFailed);
    }
  });

  it('codec - non-object top levels are DecodeErrors', () => {
    const cases = [
      encode([1, 2]),
      encode('x'),
      encode(1),
      encode(null),
      encode(true),
      encode(1.5),
      encode(new Uint8Array([1, 2])),
      encode(new Date(0)),
      utf8('[1,2]'),
      utf8('"x"'),
      utf8('null'),
      utf8('12'),
    ];
    for (const bytes of cases) {
      const e = expectCode(() => decode(bytes), DecodeError, ErrorCode.DecodeFailed);
      expect(e).not.toBeInstanceOf(SchemaError);
    }
  });

  it('codec - oversized messages are refused before decoding', () => {
    const big = new Uint8Array(LIMITS.messageBytes + 1).fill(0xc1);
    const e = expectCode(() => decode(big), PayloadTooLargeError, ErrorCode.PayloadTooLarge) as PayloadTooLargeError;
    expect(e.size).toBe(LIMITS.messageBytes + 1);
    expect(e.limit).toBe(LIMITS.messageBytes);
    // A valid message of exactly the limit is fine.
    const pad = (n: number) => encode({ p: 'x'.repeat(n) });
    let n = LIMITS.messageBytes - 16;
    while (pad(n).length < LIMITS.messageBytes) n++;
    expect(pad(n).length).toBe(LIMITS.messageBytes);
    expect(decode(pad(n))['p']).toHaveLength(n);
    expectCode(() => decode(pad(n + 1)), PayloadTooLargeError, ErrorCode.PayloadTooLarge);
    // A caller's own limit applies too.
    expectCode(() => decode(encode({ a: 'xxxxxxxxxx' }), 8), PayloadTooLargeError, ErrorCode.PayloadTooLarge);
  });

  /** MessagePack `{ <prefix fields>, <last key>: [[[…1…]]] }` with `depth` nested one-item arrays. */
  function nestedMsgpack(fields: Record<string, unknown>, lastKey: string, depth: number): Uint8Array {
    const head = encode({ ...fields, [lastKey]: 0 });
    const prefix = head.slice(0, head.length - 1); // drop the fixint 0 of the last value
    const out = new Uint8Array(prefix.length + depth + 1);
    out.set(prefix);
    out.fill(0x91, prefix.length, prefix.length + depth); // fixarray of one item
    out[out.length - 1] = 0x01;
    return out;
  }
  const nestedJson = (fields: Record<string, unknown>, lastKey: string, depth: number) =>
    utf8(`${JSON.stringify(fields).slice(0, -1)},${JSON.stringify(lastKey)}:${'['.repeat(depth)}1${']'.repeat(depth)}}`);

  it('codec - 10k levels of nesting decode or fail typed, and the schemas refuse them', () => {
    const fields = { runId: RUN, name: 'go' };
    const cases = [nestedJson(fields, 'payload', 10_000), nestedMsgpack(fields, 'payload', 10_000)];
    expect(decode(nestedMsgpack(fields, 'payload', 1))).toEqual({ ...fields, payload: [1] });
    expect(decode(nestedJson(fields, 'payload', 2))).toEqual({ ...fields, payload: [[1]] });
    let refused = 0;
    for (const bytes of cases) {
      let decoded: Record<string, unknown>;
      try {
        decoded = decode(bytes);
      } catch (e) {
        expect(e).toBeInstanceOf(DecodeError);
        refused++;
        continue;
      }
      expect(isPlainObject(decoded)).toBe(true);
      const e = expectCode(() => parseCommand('signal', decoded, encodedSize), SchemaError, ErrorCode.SchemaViolation) as SchemaError;
      expect(e.problem).toContain('nested deeper');
      refused++;
    }
    expect(refused).toBe(2);
  });

  it('codec - nesting too deep for the decoder is a DecodeError, never a RangeError', () => {
    const depth = 120_000; // under the size limit, far too deep for a recursive decoder
    for (const bytes of [nestedMsgpack({}, 'a', depth), nestedJson({ b: 1 }, 'a', depth)]) {
      expect(bytes.length).toBeLessThanOrEqual(LIMITS.messageBytes);
      try {
        // A decoder that copes must still hand back a plain object.
        expect(isPlainObject(decode(bytes))).toBe(true);
      } catch (e) {
        expect(e).toBeInstanceOf(DecodeError);
        expect((e as DecodeError).code).toBe(ErrorCode.DecodeFailed);
      }
    }
  });

  it('codec - __proto__ keys never pollute and are refused by the schemas', () => {
    const json = utf8(`{"__proto__":{"polluted":true},"runId":"${RUN}"}`);
    const v = decode(json);
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
    expect((v as Record<string, unknown>)['polluted']).toBeUndefined();
    const e = expectCode(() => parseCommand('cancel', v, encodedSize), SchemaError, ErrorCode.SchemaViolation) as SchemaError;
    expect(e.path).toBe('__proto__');

    // Nested inside a JSON payload.
    const nested = decode(utf8(`{"workflow":"w","input":{"a":{"__proto__":{"polluted":true}}}}`));
    const e2 = expectCode(() => parseCommand('submit', nested, encodedSize), SchemaError, ErrorCode.SchemaViolation) as SchemaError;
    expect(e2.path).toBe('input.a.__proto__');

    // MessagePack: { "__proto__": { "polluted": true }, "runId": RUN }, spelled by hand.
    const key = utf8('__proto__');
    const inner = utf8('polluted');
    const rest = encode({ runId: RUN }).slice(1);
    const mp = new Uint8Array([0x82, 0xa0 | key.length, ...key, 0x81, 0xa0 | inner.length, ...inner, 0xc3, ...rest]);
    let m: Record<string, unknown> | undefined;
    try {
      m = decode(mp);
    } catch (err) {
      expect(err).toBeInstanceOf(DecodeError);
    }
    if (m) {
      expect(Object.getPrototypeOf(m)).toBe(Object.prototype);
      expect(m['polluted']).toBeUndefined();
      expectCode(() => parseCommand('cancel', m, encodedSize), SchemaError, ErrorCode.SchemaViolation);
    }
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
  });

  it('codec - constructor and prototype keys are refused inside JSON payloads', () => {
    for (const k of ['constructor', 'prototype']) {
      const v = decode(utf8(`{"workflow":"w","input":{"${k}":{"x":1}}}`));
      const e = expectCode(() => parseCommand('submit', v, encodedSize), SchemaError, ErrorCode.SchemaViolation) as SchemaError;
      expect(e.path).toBe(`input.${k}`);
    }
  });
});

describe('codec - fuzz', () => {
  const outcome = (bytes: Uint8Array) => {
    try {
      const v = decode(bytes);
      expect(isPlainObject(v)).toBe(true);
      return 'ok';
    } catch (e) {
      expect(CapstanError.is(e), String(e)).toBe(true);
      expect([ErrorCode.DecodeFailed, ErrorCode.PayloadTooLarge]).toContain((e as CapstanError).code);
      return 'error';
    }
  };

  it('codec - property: random bytes decode to a plain object or throw a CapstanError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), (bytes) => void outcome(bytes)),
      { numRuns: 5000 },
    );
  });

  it('codec - property: random bytes after a map header decode or fail typed', () => {
    const header = fc.constantFrom(0x80, 0x81, 0x82, 0x8f, 0xde, 0xdf, 0x7b);
    fc.assert(
      fc.property(header, fc.uint8Array({ maxLength: 256 }), (h, rest) => void outcome(new Uint8Array([h, ...rest]))),
      { numRuns: 5000 },
    );
  });

  it('codec - property: mutated valid messages decode or fail typed, and never pollute', () => {
    const valid = [
      encode({ runId: RUN, step: 'extract', attempt: 1, worker: 'w', outcome: 'completed', result: { n: 1, s: 'x' }, durationMs: 3 }),
      utf8(JSON.stringify({ workflow: 'demo.pipeline', input: { a: [1, { b: 'c' }] }, idempotencyKey: 'k' })),
    ];
    const mutation = fc.record({
      which: fc.nat({ max: valid.length - 1 }),
      edits: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }),
      cut: fc.option(fc.nat()),
    });
    let decoded = 0;
    fc.assert(
      fc.property(mutation, ({ which, edits, cut }) => {
        const src = valid[which] as Uint8Array;
        let bytes = src.slice();
        for (const [pos, b] of edits) bytes[pos % bytes.length] = b;
        if (cut !== null) bytes = bytes.slice(0, cut % (bytes.length + 1));
        if (outcome(bytes) === 'ok') decoded++;
        // The full intake path: decode, then the verb's schema. Typed errors only.
        for (const verb of COMMAND_VERBS) {
          try {
            parseCommand(verb, decode(bytes), encodedSize);
          } catch (e) {
            expect(CapstanError.is(e), String(e)).toBe(true);
          }
        }
      }),
      { numRuns: 3000 },
    );
    // The fuzz reaches past the decoder into the schemas.
    expect(decoded).toBeGreaterThan(0);
    expect(protoSnapshot()).toBe(protoBefore);
  });

  it('codec - property: random JSON-ish text decodes or fails typed', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 200 }), (s) => void outcome(utf8(`{${s}`))),
      { numRuns: 3000 },
    );
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
  });
});
