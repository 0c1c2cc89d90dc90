/**
 * Incident-review exports: runs taken to another machine in one file (`capstan export`,
 * the console's "Export"), replayed there with no servers at all (`capstan replay --from`).
 *
 * The file is JSON Lines, one record per line, each record's exact bytes chained:
 *
 *   {"kind":"capstan.export","format":1,"tenant":…,"created":…,"scope":…,"h":"<sha256>"}
 *   {"kind":"workflow","id":…,"version":…,"fingerprint":…,"h":…}     the versions the runs used
 *   {"kind":"policy","version":…,"stored":…,"record":"<base64>","h":…}  the policy versions in force, as stored
 *   {"kind":"event","run":…,"seq":…,"type":…,"streamSeq":…,"stored":…,"data":"<base64>","h":…}
 *   {"kind":"end","records":…,"runs":…,"events":…,"sha256":"<of every byte before this line>","h":…}
 *
 * `h` is SHA-256 over the previous record's `h`, a newline, and this line up to `,"h":`. An
 * event's and a policy version's bytes are exactly what the stream stored (MessagePack), so
 * the replay decodes the record itself, not a copy of it. Reading checks every line in order
 * and names the first that does not parse, does not chain, or disagrees with itself; a file
 * without its `end` record was cut short. A name ending in `.gz` is written gzip-compressed;
 * reading recognises gzip by its magic bytes.
 *
 * The checksums catch damage and edits made without recomputing them; they are not a
 * signature: someone who rewrites the whole file can make it consistent again.
 */
import { createHash } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';
import { decode, ExportDamagedError, parsePolicyVersionRecord, parseRunEvent, type PolicyVersionRecord, type RunEvent, type TenantId } from '@capstan/schemas';

export const EXPORT_FORMAT = 1;
const MAGIC = 'capstan.export';

/** What was asked for: some runs by id, or every run a tenant started in a window. */
export type ExportScope = { readonly runs: readonly string[] } | { readonly since: string; readonly until: string };

/** A stored message as it goes into the file. */
export interface StoredRecord {
  readonly data: Uint8Array;
  /** Stream sequence. */
  readonly seq: number;
  /** When the stream stored it. */
  readonly time: Date;
}

export interface ExportInput {
  readonly tenant: TenantId;
  readonly scope: ExportScope;
  readonly created: Date;
  /** Each run's events as stored, in order. */
  readonly runs: ReadonlyMap<string, readonly StoredRecord[]>;
  /** Policy versions (version = its stream sequence), as stored. */
  readonly policies: readonly StoredRecord[];
  /** Fingerprints of workflow versions the runs did not record one for (from a registry). */
  readonly fingerprints?: ReadonlyMap<string, string>;
}

export interface ExportedPolicy {
  readonly version: number;
  readonly stored: string;
  readonly record: PolicyVersionRecord;
}

export interface ExportedWorkflow {
  readonly id: string;
  readonly version: number;
  /** Undefined when the runs recorded none and the exporter had no definition. */
  readonly fingerprint: string | undefined;
}

export interface ExportContents {
  readonly tenant: TenantId;
  readonly scope: ExportScope;
  readonly created: string;
  readonly workflows: readonly ExportedWorkflow[];
  readonly policies: ReadonlyMap<number, ExportedPolicy>;
  /** Each run's events, decoded from the recorded bytes, in order. */
  readonly runs: ReadonlyMap<string, readonly RunEvent[]>;
  readonly events: number;
  /** SHA-256 of the file's content (before the `end` record), as it states and as checked. */
  readonly sha256: string;
}

const wfKey = (id: string, version: number) => `${id}@${version}`;
const b64 = (u: Uint8Array) => Buffer.from(u.buffer, u.byteOffset, u.byteLength).toString('base64');

/** The file's bytes (gzip-compressed when `gzip`). */
export function writeExport(input: ExportInput, opts: { gzip?: boolean } = {}): Buffer {
  const lines: string[] = [];
  const content = createHash('sha256');
  let prev = '';
  const add = (record: Record<string, unknown>) => {
    const body = JSON.stringify(record).slice(0, -1);
    prev = createHash('sha256').update(`${prev}\n${body}`).digest('hex');
    const line = `${body},"h":"${prev}"}\n`;
    lines.push(line);
    // The end record states the checksum of everything before it.
    if (record['kind'] !== 'end') content.update(line);
  };

  add({ kind: MAGIC, format: EXPORT_FORMAT, tenant: input.tenant, created: input.created.toISOString(), scope: input.scope });
  // The workflow versions the runs used, with the fingerprints they recorded (or the exporter knows).
  const workflows = new Map<string, ExportedWorkflow>();
  let events = 0;
  for (const stored of input.runs.values()) {
    const first = stored[0];
    if (!first) continue;
    const e = parseRunEvent(decode(first.data));
    if (e.type !== 'run.started') continue;
    const key = wfKey(e.data.workflow, e.data.version);
    const fp = e.data.fingerprint ?? input.fingerprints?.get(key);
    const known = workflows.get(key);
    if (!known || (known.fingerprint === undefined && fp !== undefined)) workflows.set(key, { id: e.data.workflow, version: e.data.version, fingerprint: fp });
  }
  for (const w of [...workflows.values()].sort((a, b) => (a.id === b.id ? a.version - b.version : a.id < b.id ? -1 : 1))) {
    add({ kind: 'workflow', id: w.id, version: w.version, fingerprint: w.fingerprint ?? null });
  }
  for (const p of [...input.policies].sort((a, b) => a.seq - b.seq)) add({ kind: 'policy', version: p.seq, stored: p.time.toISOString(), record: b64(p.data) });
  for (const [runId, stored] of input.runs) {
    for (const s of stored) {
      const e = parseRunEvent(decode(s.data));
      add({ kind: 'event', run: runId, seq: e.seq, type: e.type, streamSeq: s.seq, stored: s.time.toISOString(), data: b64(s.data) });
      events++;
    }
  }
  const sha256 = content.digest('hex');
  add({ kind: 'end', records: lines.length + 1, runs: input.runs.size, events, sha256 });
  const text = Buffer.from(lines.join(''), 'utf8');
  return opts.gzip ? gzipSync(text) : text;
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Reads and checks an export file's bytes.
 * @throws ExportDamagedError naming the first bad record (1-based line number)
 */
export function readExport(file: Uint8Array): ExportContents {
  let bytes: Buffer = Buffer.from(file.buffer, file.byteOffset, file.byteLength);
  if (bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      bytes = gunzipSync(bytes);
    } catch (e) {
      // A cut or damaged gzip stream: what can still be read is checked, and names where it stops.
      bytes = partialGunzip(bytes);
      if (bytes.length === 0) throw new ExportDamagedError(1, `the gzip stream does not decompress (${(e as Error).message})`);
    }
  }
  const text = bytes.toString('utf8');
  const lines = text.split('\n');
  // A complete file ends with a newline: the last piece is empty.
  const complete = lines.at(-1) === '';
  if (complete) lines.pop();

  const content = createHash('sha256');
  let prev = '';
  let header: Record<string, unknown> | undefined;
  let end: Record<string, unknown> | undefined;
  const workflows: ExportedWorkflow[] = [];
  const policies = new Map<number, ExportedPolicy>();
  const runs = new Map<string, RunEvent[]>();
  let events = 0;
  let contentSha = '';

  for (let i = 0; i < lines.length; i++) {
    const n = i + 1;
    const line = lines[i] as string;
    if (end) throw new ExportDamagedError(n, 'there is more after the end record');
    const bad = (why: string) => new ExportDamagedError(n, why);
    if (i === lines.length - 1 && !complete) throw bad('the record is cut short (the file ends in the middle of it)');
    const cut = line.lastIndexOf(',"h":"');
    if (cut < 0 || !line.endsWith('"}') || line.length - cut !== 6 + 64 + 2) throw bad('the record has no checksum (it is not a line this format writes)');
    const body = line.slice(0, cut);
    const h = line.slice(cut + 6, -2);
    const expect = createHash('sha256').update(`${prev}\n${body}`).digest('hex');
    if (h !== expect)
      throw bad(n === 1 ? 'the header does not match its checksum' : 'the record does not match its checksum (changed, or not the one that followed the record before it)');
    let r: unknown;
    try {
      r = JSON.parse(line);
    } catch (e) {
      throw bad(`the record is not JSON (${(e as Error).message})`);
    }
    if (!isObj(r)) throw bad('the record is not a JSON object');
    prev = h;
    const kind = r['kind'];
    if (n === 1) {
      if (kind !== MAGIC) throw bad('this is not a Capstan export (no capstan.export header)');
      if (r['format'] !== EXPORT_FORMAT) throw bad(`export format ${String(r['format'])} is not one this build reads (${EXPORT_FORMAT})`);
      if (typeof r['tenant'] !== 'string' || typeof r['created'] !== 'string' || !isObj(r['scope'])) throw bad('the header lacks its tenant, time or scope');
      header = r;
    } else if (kind === 'end') {
      contentSha = content.digest('hex');
      if (r['sha256'] !== contentSha) throw bad(`the file's checksum is ${contentSha}, the end record says ${String(r['sha256'])}`);
      if (r['records'] !== n || r['runs'] !== runs.size || r['events'] !== events)
        throw bad(`the end record counts ${String(r['records'])} records, ${String(r['runs'])} runs, ${String(r['events'])} events; the file has ${n}, ${runs.size}, ${events}`);
      end = r;
    } else if (kind === 'workflow') {
      const { id, version, fingerprint } = r;
      if (typeof id !== 'string' || typeof version !== 'number' || !(fingerprint === null || (typeof fingerprint === 'string' && /^[0-9a-f]{64}$/.test(fingerprint))))
        throw bad('a workflow record needs id, version and fingerprint');
      workflows.push({ id, version, fingerprint: fingerprint ?? undefined });
    } else if (kind === 'policy') {
      const { version, stored, record } = r;
      if (typeof version !== 'number' || typeof stored !== 'string' || typeof record !== 'string') throw bad('a policy record needs version, stored and record');
      let rec: PolicyVersionRecord;
      try {
        rec = parsePolicyVersionRecord(decode(Buffer.from(record, 'base64')));
      } catch (e) {
        throw bad(`policy version ${version} does not decode: ${(e as Error).message}`);
      }
      if (rec.version !== version) throw bad(`the policy record says version ${rec.version}, the line says ${version}`);
      if (createHash('sha256').update(rec.text).digest('hex') !== rec.sha256) throw bad(`policy version ${version}'s text does not match its sha256`);
      policies.set(version, { version, stored, record: rec });
    } else if (kind === 'event') {
      const { run, seq, type, data } = r;
      if (typeof run !== 'string' || typeof seq !== 'number' || typeof type !== 'string' || typeof data !== 'string') throw bad('an event record needs run, seq, type and data');
      let e: RunEvent;
      try {
        e = parseRunEvent(decode(Buffer.from(data, 'base64')));
      } catch (x) {
        throw bad(`the event does not decode: ${(x as Error).message}`);
      }
      if (e.runId !== run || e.seq !== seq || e.type !== type) throw bad(`the recorded event is ${e.runId} #${e.seq} ${e.type}, the line says ${run} #${seq} ${type}`);
      const list = runs.get(run) ?? [];
      if (!runs.has(run)) runs.set(run, list);
      list.push(e);
      events++;
    } else {
      throw bad(`unknown record kind ${JSON.stringify(kind)}`);
    }
    if (!end) content.update(`${line}\n`);
  }
  if (!header) throw new ExportDamagedError(1, 'the file is empty');
  if (!end) throw new ExportDamagedError(lines.length + 1, `the file ends after record ${lines.length} without its end record (cut short)`);
  return {
    tenant: header['tenant'] as TenantId,
    scope: header['scope'] as ExportScope,
    created: header['created'] as string,
    workflows,
    policies,
    runs,
    events,
    sha256: contentSha,
  };
}

/** What a damaged gzip stream still yields, up to the damage. */
function partialGunzip(bytes: Buffer): Buffer {
  try {
    return gunzipSync(bytes, { finishFlush: 2 /* Z_SYNC_FLUSH */ });
  } catch {
    return Buffer.alloc(0);
  }
}
