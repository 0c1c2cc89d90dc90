/**
 * Verifying the projections against the run streams. For each tenant, the rows are read in
 * one read-only snapshot together with the checkpoint; the stream is read up to that
 * checkpoint and folded in memory through the same pure projection the projector uses; the
 * two are compared field by field. A projector still catching up is therefore not a
 * mismatch: the projections claim exactly what the checkpoint says, no more.
 *
 * Reported: every differing field, every row missing or without a reason to exist (a row of
 * a run that has no events, say), and every broken event chain, in the stream (a run whose
 * events do not start at 1 with `run.started` and go on without gaps) and in the events
 * table (events of a run missing from it).
 */
import { and, eq, gte, ne, notLike } from 'drizzle-orm';
import type { JetStreamManager } from '@nats-io/jetstream';
import { db as schema, Streams, type TenantId } from '@capstan/schemas';
import type { Database } from '@capstan/kit';
import { deadLetterOf, readCheckpoint } from './apply.js';
import { decodeStored, EMPTY_VIEW, projectEvent, stepKey, type RunView, type StreamMessage } from './projection.js';
import { readRunStream } from './stream.js';
import { FLEET_AUDIT_RUN_ID } from './fleet.js';

export type ProjectionTable = 'runs' | 'run_search' | 'steps' | 'events' | 'approvals' | 'audit_log' | 'dead_letters';

export interface Mismatch {
  readonly tenant: TenantId;
  /** Empty for a dead letter of a message that names no run. */
  readonly runId: string;
  readonly table: ProjectionTable;
  /** The row within the run: `step#attempt`, an event's seq, a search `key=value`… */
  readonly key: string;
  /** A column, or `(row)` when the whole row is missing or should not exist. */
  readonly field: string;
  readonly expected: unknown;
  readonly found: unknown;
}

export interface BrokenChain {
  readonly tenant: TenantId;
  readonly runId: string;
  /** `stream`: the run's recorded events themselves; `projection`: the events table. */
  readonly where: 'stream' | 'projection';
  readonly problem: string;
}

export interface VerifiedTenant {
  readonly tenant: TenantId;
  /** What the projections claim to cover, and how far the stream is. */
  readonly checkpoint: number;
  readonly streamLastSeq: number;
  readonly runs: number;
  readonly events: number;
  /** Messages dead-lettered by the projector (undecodable, or refused by Postgres). */
  readonly deadLetters: number;
  readonly mismatches: number;
  readonly brokenChains: number;
}

export interface VerifyReport {
  readonly ok: boolean;
  readonly tenants: readonly VerifiedTenant[];
  readonly mismatches: readonly Mismatch[];
  readonly brokenChains: readonly BrokenChain[];
  readonly elapsedMs: number;
}

export async function verifyProjections(d: Database, jsmOf: (t: TenantId) => Promise<JetStreamManager>, tenants: readonly TenantId[]): Promise<VerifyReport> {
  const t0 = performance.now();
  const verified: VerifiedTenant[] = [];
  const mismatches: Mismatch[] = [];
  const brokenChains: BrokenChain[] = [];
  for (const t of tenants) {
    const r = await verifyTenant(d, await jsmOf(t), t);
    verified.push(r.summary);
    mismatches.push(...r.mismatches);
    brokenChains.push(...r.brokenChains);
  }
  return { ok: mismatches.length === 0 && brokenChains.length === 0, tenants: verified, mismatches, brokenChains, elapsedMs: performance.now() - t0 };
}

type Row = Record<string, unknown>;
/** A table's rows by run and key within the run. */
type Keyed = Map<string, { runId: string; key: string; row: Row }>;

async function snapshot(d: Database, t: TenantId) {
  const { runs, runSearch, steps, events, approvals, auditLog, deadLetters } = schema;
  return d.db.transaction(
    async (tx) => ({
      checkpoint: await readCheckpoint(tx, t),
      runs: await tx.select().from(runs).where(eq(runs.tenant, t)),
      search: await tx.select().from(runSearch).where(eq(runSearch.tenant, t)),
      steps: await tx.select().from(steps).where(eq(steps.tenant, t)),
      events: await tx.select().from(events).where(eq(events.tenant, t)),
      approvals: await tx.select().from(approvals).where(eq(approvals.tenant, t)),
      // Rows about the fleet (worker admission) come from the fleet stream, not the run stream;
      // rows with a negative seq were written by data-plane services as they acted (kit's audit-sink);
      // rows about a schedule or a route (`schedule:<id>`, `route:<id>`) come from the triggers stream.
      audit: await tx
        .select()
        .from(auditLog)
        .where(and(eq(auditLog.tenant, t), ne(auditLog.runId, FLEET_AUDIT_RUN_ID), gte(auditLog.seq, 0), notLike(auditLog.runId, '%:%'))),
      deadLetters: await tx
        .select()
        .from(deadLetters)
        .where(and(eq(deadLetters.tenant, t), eq(deadLetters.stream, Streams.runs(t)))),
    }),
    // One consistent view while a live projector keeps writing.
    { isolationLevel: 'repeatable read', accessMode: 'read only' },
  );
}

async function verifyTenant(d: Database, jsm: JetStreamManager, t: TenantId): Promise<{ summary: VerifiedTenant; mismatches: Mismatch[]; brokenChains: BrokenChain[] }> {
  const found = await snapshot(d, t);
  const { checkpoint } = found;
  const streamLastSeq = await jsm.streams
    .info(Streams.runs(t))
    .then((i) => i.state.last_seq)
    .catch(() => 0);
  const deadSeqs = new Set(found.deadLetters.map((r) => r.streamSeq));

  // The expected rows: the stream up to the checkpoint, folded.
  const expected = {
    runs: new Map() as Keyed,
    search: new Map() as Keyed,
    steps: new Map() as Keyed,
    events: new Map() as Keyed,
    approvals: new Map() as Keyed,
    audit: new Map() as Keyed,
    deadLetters: new Map() as Keyed,
  };
  const views = new Map<string, RunView>();
  const streamSeqs = new Map<string, { seq: number; type: string }[]>();
  const put = (m: Keyed, runId: string, key: string, row: object) => m.set(`${runId}/${key}`, { runId, key, row: row as Row });
  let events = 0;
  const msgs: StreamMessage[] = [];
  if (checkpoint > 0) for await (const page of readRunStream(jsm, t, { upTo: checkpoint })) msgs.push(...page);
  for (const m of msgs) {
    const dec = decodeStored(t, m);
    if (!dec.ok) {
      const { streamSeq, subject, code, message } = deadLetterOf(t, m, dec.error);
      put(expected.deadLetters, '', String(m.seq), { streamSeq, subject, code, message });
      continue;
    }
    const e = dec.stored.event;
    const chain = streamSeqs.get(e.runId) ?? [];
    chain.push({ seq: e.seq, type: e.type });
    streamSeqs.set(e.runId, chain);
    // A valid event the projector had to dead-letter (Postgres refused its rows) is not in the rows.
    if (deadSeqs.has(m.seq)) {
      const row = found.deadLetters.find((r) => r.streamSeq === m.seq) as Row;
      put(expected.deadLetters, '', String(m.seq), { streamSeq: m.seq, subject: m.subject, code: row['code'], message: row['message'] });
      continue;
    }
    events++;
    const p = projectEvent(t, views.get(e.runId) ?? EMPTY_VIEW, dec.stored);
    views.set(e.runId, p.view);
    put(expected.events, e.runId, String(e.seq), p.event);
    for (const s of p.search) put(expected.search, e.runId, `${s.key}=${s.value}`, s);
    // Audit rows are only ever inserted: the first one for an event stands.
    if (p.audit && !expected.audit.has(`${e.runId}/${e.seq}`)) put(expected.audit, e.runId, String(e.seq), p.audit);
  }
  for (const [runId, v] of views) {
    if (v.run) put(expected.runs, runId, '', v.run);
    for (const s of v.steps.values()) put(expected.steps, runId, stepKey(s.step, s.attempt), s);
    for (const a of v.approvals.values()) put(expected.approvals, runId, a.step, a);
  }

  const keyed = <T extends { runId: string }>(rows: T[], key: (r: T) => string): Keyed =>
    new Map(rows.map((r) => [`${r.runId}/${key(r)}`, { runId: r.runId, key: key(r), row: r as unknown as Row }]));
  const actual = {
    runs: keyed(found.runs, () => ''),
    search: keyed(found.search, (r) => `${r.key}=${r.value}`),
    steps: keyed(found.steps, (r) => stepKey(r.step, r.attempt)),
    events: keyed(found.events, (r) => String(r.seq)),
    approvals: keyed(found.approvals, (r) => r.step),
    audit: keyed(
      found.audit.map(({ id: _id, ...r }) => r),
      (r) => String(r.seq),
    ),
    deadLetters: keyed(
      found.deadLetters.map((r) => ({ runId: '', streamSeq: r.streamSeq, subject: r.subject, code: r.code, message: r.message })),
      (r) => String(r.streamSeq),
    ),
  };

  const mismatches: Mismatch[] = [];
  const compare = (table: ProjectionTable, exp: Keyed, act: Keyed, ignore: readonly string[] = ['tenant', 'runId']) => {
    for (const [k, e] of exp) {
      const a = act.get(k);
      if (!a) {
        mismatches.push({ tenant: t, runId: e.runId, table, key: e.key, field: '(row)', expected: 'present', found: 'missing' });
        continue;
      }
      for (const field of Object.keys(e.row)) {
        if (ignore.includes(field)) continue;
        const x = show(e.row[field]);
        const y = show(a.row[field]);
        if (!same(x, y)) mismatches.push({ tenant: t, runId: e.runId, table, key: e.key, field, expected: x, found: y });
      }
    }
    for (const [k, a] of act) {
      if (!exp.has(k)) mismatches.push({ tenant: t, runId: a.runId, table, key: a.key, field: '(row)', expected: 'absent', found: 'present' });
    }
  };
  compare('runs', expected.runs, actual.runs);
  compare('run_search', expected.search, actual.search);
  compare('steps', expected.steps, actual.steps);
  compare('events', expected.events, actual.events);
  compare('approvals', expected.approvals, actual.approvals);
  compare('audit_log', expected.audit, actual.audit);
  compare('dead_letters', expected.deadLetters, actual.deadLetters);

  const brokenChains: BrokenChain[] = [];
  for (const [runId, chain] of streamSeqs) {
    for (const problem of streamChainProblems(chain)) brokenChains.push({ tenant: t, runId, where: 'stream', problem });
  }
  // Events of a run the stream says the events table must hold, and does not.
  const foundSeqs = new Map<string, Set<number>>();
  for (const r of found.events) foundSeqs.set(r.runId, (foundSeqs.get(r.runId) ?? new Set()).add(r.seq));
  const expectedSeqs = new Map<string, number[]>();
  for (const e of expected.events.values()) {
    const seqs = expectedSeqs.get(e.runId);
    if (seqs) seqs.push(Number(e.key));
    else expectedSeqs.set(e.runId, [Number(e.key)]);
  }
  for (const [runId, seqs] of expectedSeqs) {
    const have = foundSeqs.get(runId) ?? new Set<number>();
    const missing = seqs.filter((s) => !have.has(s));
    if (missing.length > 0) brokenChains.push({ tenant: t, runId, where: 'projection', problem: `missing events: seq ${ranges(missing)}` });
  }

  return {
    summary: {
      tenant: t,
      checkpoint,
      streamLastSeq,
      runs: views.size,
      events,
      deadLetters: found.deadLetters.length,
      mismatches: mismatches.length,
      brokenChains: brokenChains.length,
    },
    mismatches,
    brokenChains,
  };
}

/** What is wrong with a run's recorded sequence numbers, if anything. */
function streamChainProblems(chain: readonly { seq: number; type: string }[]): string[] {
  const problems: string[] = [];
  const first = chain[0];
  if (first && (first.seq !== 1 || first.type !== 'run.started')) problems.push(`starts with ${first.type} at seq ${first.seq}, not run.started at seq 1`);
  for (let i = 1; i < chain.length; i++) {
    const prev = (chain[i - 1] as { seq: number }).seq;
    const seq = (chain[i] as { seq: number }).seq;
    if (seq === prev) problems.push(`seq ${seq} recorded twice`);
    else if (seq !== prev + 1) problems.push(seq > prev ? `gap: seq ${seq} follows seq ${prev}` : `seq ${seq} follows seq ${prev}`);
  }
  return problems;
}

/** `1, 3-5, 9` */
function ranges(seqs: readonly number[]): string {
  const s = [...seqs].sort((a, b) => a - b);
  const out: string[] = [];
  for (let i = 0; i < s.length;) {
    let j = i;
    while (j + 1 < s.length && (s[j + 1] as number) === (s[j] as number) + 1) j++;
    out.push(i === j ? String(s[i]) : `${s[i]}-${s[j]}`);
    i = j + 1;
  }
  return out.join(', ');
}

/** A value as a report shows it: dates as ISO strings, JSON with sorted keys (jsonb's order is its own). */
function show(v: unknown): unknown {
  if (v === undefined || v === null) return null;
  if (v instanceof Date) return Number.isNaN(v.getTime()) ? 'Invalid Date' : v.toISOString();
  if (typeof v === 'object') return JSON.parse(canonical(v)) as unknown;
  return v;
}

function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}

function same(a: unknown, b: unknown): boolean {
  return a === b || canonical(a) === canonical(b);
}
