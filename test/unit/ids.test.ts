import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ErrorCode, InvalidNameError, RUN_ID_PATTERN, isRunId, makeRunId, parseRunId, runIdTime, type RunId } from '@capstan/schemas';
import { derivedRunId, newRunId } from '@capstan/kit';
import { parseTenantId } from '@capstan/schemas';

const MAX_TIME = 2 ** 48 - 1;
const entropy = fc.uint8Array({ minLength: 10, maxLength: 32 });
const time = fc.integer({ min: 0, max: MAX_TIME });

function compareBytes(a: Uint8Array, b: Uint8Array, n: number): number {
  for (let i = 0; i < n; i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

describe('ids - makeRunId', () => {
  it('ids - known vectors: zero, maximum, and the ULID spec timestamp', () => {
    expect(makeRunId(0, new Uint8Array(10))).toBe('0'.repeat(26));
    expect(makeRunId(MAX_TIME, new Uint8Array(10).fill(255))).toBe(`7${'Z'.repeat(25)}`);
    // The ULID spec's example: ulid(1469918176385) starts with 01ARYZ6S41.
    expect(makeRunId(1_469_918_176_385, new Uint8Array(10)).slice(0, 10)).toBe('01ARYZ6S41');
    // Entropy is big-endian base32: 0x00..01 ends in ...0001 (last 5 bits of 80).
    const one = new Uint8Array(10);
    one[9] = 1;
    expect(makeRunId(0, one)).toBe(`${'0'.repeat(25)}1`);
  });

  it('ids - property: produces valid ULIDs whose time round-trips', () => {
    fc.assert(
      fc.property(time, entropy, (t, e) => {
        const id = makeRunId(t, e);
        expect(id).toHaveLength(26);
        expect(id).toMatch(RUN_ID_PATTERN);
        expect(isRunId(id)).toBe(true);
        expect(parseRunId(id)).toBe(id);
        expect(runIdTime(id)).toBe(t);
      }),
      { numRuns: 1000 },
    );
  });

  it('ids - property: fractional times are floored', () => {
    fc.assert(
      fc.property(fc.double({ min: 0, max: MAX_TIME, noNaN: true }), entropy, (t, e) => {
        expect(runIdTime(makeRunId(t, e))).toBe(Math.floor(t));
      }),
    );
  });

  it('ids - property: ids sort by time, then by entropy', () => {
    fc.assert(
      fc.property(time, time, entropy, entropy, (t1, t2, e1, e2) => {
        const a = makeRunId(t1, e1);
        const b = makeRunId(t2, e2);
        const byString = a < b ? -1 : a > b ? 1 : 0;
        const expected = t1 !== t2 ? Math.sign(t1 - t2) : Math.sign(compareBytes(e1, e2, 10));
        expect(byString).toBe(expected);
      }),
      { numRuns: 1000 },
    );
  });

  it('ids - only the first 10 entropy bytes count', () => {
    const a = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    const b = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 99]);
    expect(makeRunId(5, a)).toBe(makeRunId(5, b));
    expect(makeRunId(5, a)).not.toBe(makeRunId(5, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 11])));
  });

  it('ids - too little entropy is a RangeError', () => {
    expect(() => makeRunId(0, new Uint8Array(9))).toThrow(RangeError);
  });

  it('ids - times outside 48 bits are a RangeError, never an invalid id', () => {
    for (const bad of [-1, 2 ** 48, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
      expect(() => makeRunId(bad, new Uint8Array(10)), String(bad)).toThrow(RangeError);
    }
  });
});

describe('ids - parseRunId', () => {
  const good = makeRunId(1_700_000_000_000, new Uint8Array(10).fill(42));
  const bad: unknown[] = [
    '',
    good.toLowerCase(),
    good.slice(0, 25),
    `${good}0`,
    `8${good.slice(1)}`, // beyond 48 bits of time
    `${good.slice(0, 25)}I`,
    `${good.slice(0, 25)}L`,
    `${good.slice(0, 25)}O`,
    `${good.slice(0, 25)}U`,
    ` ${good.slice(1)}`,
    `${good.slice(0, 12)}.${good.slice(13)}`,
    `${good.slice(0, 12)}*${good.slice(13)}`,
    42,
    null,
    undefined,
    { toString: () => good },
    Object.create(null),
  ];
  for (const v of bad) {
    it(`ids - ${typeof v === 'string' ? JSON.stringify(v) : String(typeof v)} is not a run id`, () => {
      expect(isRunId(v)).toBe(false);
      let caught: unknown;
      try {
        parseRunId(v);
      } catch (e) {
        caught = e;
      }
      expect(caught).toBeInstanceOf(InvalidNameError);
      expect((caught as InvalidNameError).code).toBe(ErrorCode.InvalidRunId);
    });
  }

  it('ids - the error message shows untrusted input escaped and cut', () => {
    try {
      parseRunId(`x\n${'y'.repeat(500)}`);
      expect.unreachable();
    } catch (e) {
      const msg = (e as Error).message;
      expect(msg).not.toContain('\n');
      expect(msg.length).toBeLessThan(200);
    }
  });
});

describe('ids - platform run ids (kit)', () => {
  it('ids - newRunId uses the given clock and is a valid ULID', () => {
    const id: RunId = newRunId(1_700_000_000_123);
    expect(isRunId(id)).toBe(true);
    expect(runIdTime(id)).toBe(1_700_000_000_123);
    expect(newRunId(1)).not.toBe(newRunId(1));
  });

  it('ids - derivedRunId is deterministic per tenant and stream sequence', () => {
    const t = parseTenantId('acme');
    const u = parseTenantId('other');
    const a = derivedRunId(t, 7, 1_700_000_000_000);
    expect(derivedRunId(t, 7, 1_700_000_000_000)).toBe(a);
    expect(derivedRunId(t, 8, 1_700_000_000_000)).not.toBe(a);
    expect(derivedRunId(u, 7, 1_700_000_000_000)).not.toBe(a);
    expect(isRunId(a)).toBe(true);
    expect(runIdTime(a)).toBe(1_700_000_000_000);
  });
});
