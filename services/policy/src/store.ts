/**
 * A tenant's policy versions, as its `CAP_POLICY_<t>` stream holds them: version N is the Nth
 * message of `cap.<t>.policy.versions`, and nothing is ever deleted (`deny_delete`,
 * `deny_purge`), so a version once stored is the same forever.
 *
 * The service follows each tenant's stream (direct gets, woken by a subscription) and keeps every version
 * in memory (texts only; compiled sets live in a bounded cache). A new version is appended
 * with the stream's expected last sequence, so two changes racing (two service instances,
 * two operators) cannot both become version N: the loser reloads and tries again.
 *
 * A stored message that does not decode, or whose version, digest or subject disagree with
 * where it sits, is kept as an invalid version: decisions under it deny (fail closed) until
 * a valid version follows.
 */
import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import {
  decode,
  encode,
  ErrorCode,
  MsgIds,
  parsePolicyVersionRecord,
  Streams,
  Subjects,
  UnavailableError,
  CapstanError,
  type PolicyVersionRecord,
  type TenantId,
} from '@capstan/schemas';
import { tailStream, type Logger, type TenantConnection } from '@capstan/kit';
import { sha256Hex } from './compile.js';

/** One stored version: its record, or why the message there is not one. */
export interface StoredVersion {
  readonly version: number;
  readonly record?: PolicyVersionRecord;
  readonly problem?: string;
  /** Size of the stored message. */
  readonly bytes: number;
  /** When the stream stored it (for an invalid record, the only time there is). */
  readonly storedAt: Date;
}

export interface TenantVersions {
  readonly tenant: TenantId;
  /** The version in force: the last stored (0: none). */
  latest(): number;
  get(version: number): StoredVersion | undefined;
  all(): readonly StoredVersion[];
  /**
   * Appends a new version with `text` unless it is the version in force already.
   * @throws CapstanError `concurrency_conflict` when racing changes kept winning.
   */
  append(input: { text: string; by: string; reason?: string; at: Date }): Promise<{ version: number; sha256: string; unchanged: boolean }>;
  /** Waits until every version stored so far (by any instance) is here. */
  refresh(): Promise<void>;
  stop(): Promise<void>;
}

/** The tenant has no policy stream: it is not provisioned (or was provisioned before policies). */
export class NoPolicyStreamError extends CapstanError {
  constructor(readonly tenant: TenantId) {
    super(ErrorCode.UnknownTenant, `tenant ${tenant} has no policy stream (provision it: capstan tenant add ${tenant})`);
  }
}

const CATCH_UP_MS = 5000;
const APPEND_ATTEMPTS = 10;

export function readStored(t: TenantId, seq: number, subject: string, data: Uint8Array, storedAt: Date): StoredVersion {
  try {
    const record = parsePolicyVersionRecord(decode(data));
    if (subject !== Subjects.policyVersions(t)) return { version: seq, problem: `stored on ${subject}`, bytes: data.length, storedAt };
    if (record.version !== seq) return { version: seq, problem: `claims to be version ${record.version} but is message ${seq}`, bytes: data.length, storedAt };
    if (sha256Hex(record.text) !== record.sha256) return { version: seq, problem: 'its text does not match its sha256', bytes: data.length, storedAt };
    return { version: seq, record, bytes: data.length, storedAt };
  } catch (e) {
    return { version: seq, problem: `not a policy version record: ${(e as Error).message}`, bytes: data.length, storedAt };
  }
}

/**
 * Opens a tenant's versions: reads the stream to its current end, then keeps following it.
 * @throws NoPolicyStreamError when the tenant has no policy stream.
 */
export async function openTenantVersions({ nc, js, jsm }: TenantConnection, t: TenantId, log: Logger): Promise<TenantVersions> {
  const stream = Streams.policy(t);
  let lastSeq: number;
  try {
    lastSeq = (await jsm.streams.info(stream)).state.last_seq;
  } catch (e) {
    if (e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamNotFound) throw new NoPolicyStreamError(t);
    throw new UnavailableError(`cannot read ${stream}: ${(e as Error).message}`, { cause: e });
  }
  const versions: StoredVersion[] = [];
  const waiters: { seq: number; resolve: () => void }[] = [];
  const put = (v: StoredVersion) => {
    if (v.version !== versions.length + 1) return;
    versions.push(v);
    for (let i = waiters.length - 1; i >= 0; i--) {
      const w = waiters[i];
      if (w && w.seq <= versions.length) {
        waiters.splice(i, 1);
        w.resolve();
      }
    }
  };
  const reached = (seq: number, ms: number) =>
    seq <= versions.length
      ? Promise.resolve()
      : new Promise<void>((resolve, reject) => {
          const w = { seq, resolve: () => (clearTimeout(timer), resolve()) };
          const timer = setTimeout(() => {
            waiters.splice(waiters.indexOf(w), 1);
            reject(new UnavailableError(`${stream} did not deliver version ${seq} within ${ms} ms`));
          }, ms);
          waiters.push(w);
        });

  const tail = tailStream({
    nc,
    jsm,
    stream,
    subject: Subjects.policyVersions(t),
    from: () => versions.length,
    apply: (m) => {
      put(readStored(t, m.seq, m.subject, m.data, m.time));
      const v = versions.at(-1);
      if (v?.problem !== undefined && v.version === m.seq)
        log.error({ tenant: t, version: m.seq, problem: v.problem }, 'stored policy version is invalid: decisions under it deny');
    },
    what: 'a policy version',
    log,
    pollMs: 2000,
  });
  await reached(lastSeq, CATCH_UP_MS);

  let appending: Promise<unknown> = Promise.resolve();

  async function catchUp(): Promise<void> {
    const last = (await jsm.streams.info(stream)).state.last_seq;
    // Look now rather than at the next poll.
    void tail.caughtUp();
    await reached(last, CATCH_UP_MS);
  }

  return {
    tenant: t,
    latest: () => versions.length,
    get: (version) => versions[version - 1],
    all: () => versions,
    append(input) {
      // One change at a time per instance: only other instances can race this one.
      const run = appending.then(() => appendNow(input));
      appending = run.catch(() => undefined);
      return run;
    },
    refresh: catchUp,
    async stop() {
      await tail.stop();
    },
  };

  async function appendNow(input: { text: string; by: string; reason?: string; at: Date }): Promise<{ version: number; sha256: string; unchanged: boolean }> {
    const sha256 = sha256Hex(input.text);
    for (let attempt = 0; attempt < APPEND_ATTEMPTS; attempt++) {
      const latest = versions.length;
      const current = versions[latest - 1];
      if (current?.record?.sha256 === sha256) return { version: latest, sha256, unchanged: true };
      const version = latest + 1;
      const record: PolicyVersionRecord = {
        version,
        text: input.text,
        by: input.by,
        ...(input.reason !== undefined ? { reason: input.reason } : {}),
        at: input.at.toISOString(),
        sha256,
      };
      try {
        const data = encode(record);
        const ack = await js.publish(Subjects.policyVersions(t), data, { msgID: MsgIds.policyVersion(version, sha256), expect: { lastSequence: latest } });
        // In force from this reply on, whatever the consumer has delivered so far.
        put({ version: ack.seq, record, bytes: data.length, storedAt: input.at });
        return { version: ack.seq, sha256, unchanged: false };
      } catch (e) {
        if (!(e instanceof JetStreamApiError && (e.code === JetStreamApiCodes.StreamWrongLastSequence || e.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown))) throw e;
        await catchUp();
      }
    }
    throw new CapstanError(ErrorCode.ConcurrencyConflict, `the policy of ${t} kept changing under this change (${APPEND_ATTEMPTS} attempts): try again`, true);
  }
}
