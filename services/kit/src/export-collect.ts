/**
 * Gathering an export from the truth: the runs' events from the tenant's run stream and the
 * policy versions from its policy stream, each message exactly as stored (see export-file.ts).
 */
import type { JetStreamManager, StoredMsg } from '@nats-io/jetstream';
import { JetStreamApiError } from '@nats-io/jetstream';
import { decode, InvalidArgumentError, JsApiCode, parseRunEvent, RunNotFoundError, Streams, Subjects, type RunId, type TenantId } from '@capstan/schemas';
import { writeExport, type ExportScope, type StoredRecord } from './export-file.js';

/** How far before `since` a window's scan starts: a run's start is stamped before it is stored. */
const WINDOW_SLACK_MS = 5 * 60_000;
const BATCH = 1000;

/** Messages of `subject` (wildcards allowed) in `stream` from sequence `from` on, in order, until `last`. */
async function* scan(jsm: JetStreamManager, stream: string, subject: string, from: number, last = Number.MAX_SAFE_INTEGER): AsyncGenerator<StoredMsg> {
  let seq = from;
  for (;;) {
    let got = 0;
    try {
      for await (const m of await jsm.direct.getBatch(stream, { seq, next_by_subj: subject, batch: BATCH })) {
        if (m.seq > last) return;
        got++;
        seq = m.seq + 1;
        yield m;
      }
    } catch (e) {
      if (!isNothing(e)) throw e;
    }
    if (got < BATCH) return;
  }
}

function isNothing(e: unknown): boolean {
  if (e instanceof JetStreamApiError) return e.code === JsApiCode.NoMessageFound || e.code === JsApiCode.StreamNotFound || e.status === 404;
  const f = (e as { isNoResponders?: unknown } | null)?.isNoResponders;
  return (typeof f === 'function' && (f as () => boolean).call(e) === true) || (e instanceof Error && /no message found|not found|no responders/i.test(e.message));
}

const record = (m: StoredMsg): StoredRecord => ({ data: m.data, seq: m.seq, time: m.time });

/** The given runs' events as stored. @throws RunNotFoundError for a run the tenant does not have */
export async function collectRuns(jsm: JetStreamManager, t: TenantId, runIds: readonly RunId[]): Promise<Map<string, StoredRecord[]>> {
  const out = new Map<string, StoredRecord[]>();
  for (const runId of runIds) {
    const list: StoredRecord[] = [];
    for await (const m of scan(jsm, Streams.runs(t), Subjects.run(t, runId), 1)) list.push(record(m));
    if (list.length === 0) throw new RunNotFoundError(t, runId);
    out.set(runId, list);
  }
  return out;
}

/**
 * Every run the tenant started in `[since, until)` (by `run.started`'s time), with all its
 * events (those after `until` too: a run is exported whole).
 */
export async function collectWindow(jsm: JetStreamManager, t: TenantId, since: Date, until: Date): Promise<Map<string, StoredRecord[]>> {
  if (!(since.getTime() < until.getTime())) throw new InvalidArgumentError('the window is empty: since must be before until');
  const stream = Streams.runs(t);
  const first = await jsm.direct.getMessage(stream, { start_time: new Date(since.getTime() - WINDOW_SLACK_MS) }).catch((e: unknown) => {
    if (isNothing(e)) return null;
    throw e;
  });
  const out = new Map<string, StoredRecord[]>();
  if (!first) return out;
  const last = (await jsm.streams.info(stream)).state.last_seq;
  const skipped = new Set<string>();
  for await (const m of scan(jsm, stream, Subjects.allRuns(t), first.seq, last)) {
    const runId = m.subject.slice(m.subject.lastIndexOf('.') + 1);
    const list = out.get(runId);
    if (list) {
      list.push(record(m));
      continue;
    }
    if (skipped.has(runId)) continue;
    // A run's first message here decides: it is in the window only if this is its start.
    const e = parseRunEvent(decode(m.data));
    if (e.type === 'run.started' && e.at >= since.getTime() && e.at < until.getTime()) out.set(runId, [record(m)]);
    else skipped.add(runId);
  }
  return out;
}

/**
 * The policy versions in force while the runs ran (from before the first start to the last
 * event), and every version a decision of theirs names.
 */
export async function collectPolicies(jsm: JetStreamManager, t: TenantId, runs: ReadonlyMap<string, readonly StoredRecord[]>): Promise<StoredRecord[]> {
  const all: StoredRecord[] = [];
  for await (const m of scan(jsm, Streams.policy(t), Subjects.policyVersions(t), 1)) all.push(record(m));
  if (all.length === 0) return [];
  let from = Number.POSITIVE_INFINITY;
  let to = 0;
  const named = new Set<number>();
  for (const list of runs.values()) {
    for (const s of list) {
      const e = parseRunEvent(decode(s.data));
      from = Math.min(from, e.at);
      to = Math.max(to, e.at);
      const v = (e.data as { version?: unknown }).version;
      if ((e.type === 'policy.decided' || e.type === 'credential.decided' || e.type === 'approval.requested') && typeof v === 'number' && v > 0) named.add(v);
    }
  }
  // Version N is in force from its storing until version N+1's.
  return all.filter((p, i) => {
    const next = all[i + 1];
    const inForce = p.time.getTime() <= to && (!next || next.time.getTime() > from);
    return inForce || named.has(p.seq);
  });
}

export interface ExportResult {
  readonly file: Buffer;
  readonly runs: number;
  readonly events: number;
  readonly policies: number;
}

/** Collects and writes an export: the given runs, or a window's. */
export async function exportRuns(
  jsm: JetStreamManager,
  t: TenantId,
  scope: ExportScope,
  opts: { gzip?: boolean; fingerprints?: ReadonlyMap<string, string>; now?: Date } = {},
): Promise<ExportResult> {
  const runs = 'runs' in scope ? await collectRuns(jsm, t, scope.runs as RunId[]) : await collectWindow(jsm, t, new Date(scope.since), new Date(scope.until));
  const policies = await collectPolicies(jsm, t, runs);
  const file = writeExport(
    { tenant: t, scope, created: opts.now ?? new Date(), runs, policies, ...(opts.fingerprints ? { fingerprints: opts.fingerprints } : {}) },
    opts.gzip ? { gzip: true } : {},
  );
  let events = 0;
  for (const l of runs.values()) events += l.length;
  return { file, runs: runs.size, events, policies: policies.length };
}
