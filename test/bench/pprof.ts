/**
 * Reads a Go pprof CPU profile (gzip'd protobuf, `profile.proto`) without Go: the share of
 * samples per function, flat (where the CPU was) and cumulative (under which calls). Only
 * the fields needed for that are decoded: samples, locations, functions, the string table.
 */
import { gunzipSync } from 'node:zlib';

type Fields = Map<number, (number | Uint8Array)[]>;

/** One protobuf message's fields: varints as numbers, length-delimited as bytes; packed varints are unpacked by the caller. */
function fields(buf: Uint8Array): Fields {
  const out: Fields = new Map();
  let i = 0;
  const varint = (): number => {
    let v = 0;
    let mul = 1;
    for (;;) {
      const b = buf[i++] as number;
      v += (b & 0x7f) * mul;
      if (b < 0x80) return v;
      mul *= 128;
    }
  };
  while (i < buf.length) {
    const tag = varint();
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    let value: number | Uint8Array;
    if (wire === 0) value = varint();
    else if (wire === 2) {
      const n = varint();
      value = buf.subarray(i, i + n);
      i += n;
    } else if (wire === 1) {
      i += 8;
      continue;
    } else if (wire === 5) {
      i += 4;
      continue;
    } else throw new Error(`pprof: unsupported wire type ${wire}`);
    const list = out.get(field) ?? [];
    list.push(value);
    out.set(field, list);
  }
  return out;
}

/** Repeated varints, packed or not. */
function varints(f: Fields, n: number): number[] {
  const out: number[] = [];
  for (const v of f.get(n) ?? []) {
    if (typeof v === 'number') out.push(v);
    else for (const [, x] of fields(prefixPacked(v))) for (const y of x) out.push(y as number);
  }
  return out;
}

/** Packed varints re-read as a run of field-1 varints (tag 0x08 before each). */
function prefixPacked(b: Uint8Array): Uint8Array {
  const out: number[] = [];
  let start = 0;
  for (let i = 0; i < b.length; i++) {
    if (((b[i] as number) & 0x80) === 0) {
      out.push(0x08, ...b.subarray(start, i + 1));
      start = i + 1;
    }
  }
  return Uint8Array.from(out);
}

const first = (f: Fields, n: number): number => {
  const v = f.get(n)?.[0];
  return typeof v === 'number' ? v : 0;
};

export interface ProfileSummary {
  /** Total of the sampled value (CPU nanoseconds for a CPU profile). */
  readonly total: number;
  /** [function, share 0..1], largest first. */
  readonly flat: readonly [string, number][];
  readonly cumulative: readonly [string, number][];
}

export function summarizeProfile(gz: Uint8Array): ProfileSummary {
  const p = fields(gunzipSync(gz));
  const strings = (p.get(6) ?? []).map((b) => Buffer.from(b as Uint8Array).toString('utf8'));
  const functions = new Map<number, string>();
  for (const b of p.get(5) ?? []) {
    const f = fields(b as Uint8Array);
    functions.set(first(f, 1), strings[first(f, 2)] ?? '?');
  }
  const locations = new Map<number, string[]>();
  for (const b of p.get(4) ?? []) {
    const l = fields(b as Uint8Array);
    locations.set(
      first(l, 1),
      (l.get(4) ?? []).map((line) => functions.get(first(fields(line as Uint8Array), 1)) ?? '?'),
    );
  }
  const flat = new Map<string, number>();
  const cum = new Map<string, number>();
  let total = 0;
  for (const b of p.get(2) ?? []) {
    const s = fields(b as Uint8Array);
    const values = varints(s, 2);
    // A CPU profile's values are [samples, nanoseconds]: weigh by the last.
    const v = values[values.length - 1] ?? 1;
    total += v;
    const stack = varints(s, 1).flatMap((id) => locations.get(id) ?? ['?']);
    const leaf = stack[0] ?? '?';
    flat.set(leaf, (flat.get(leaf) ?? 0) + v);
    for (const fn of new Set(stack)) cum.set(fn, (cum.get(fn) ?? 0) + v);
  }
  const ranked = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]).map(([k, v]): [string, number] => [k, total > 0 ? v / total : 0]);
  return { total, flat: ranked(flat), cumulative: ranked(cum) };
}
