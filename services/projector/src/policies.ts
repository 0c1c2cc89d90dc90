/**
 * The tenant's policy versions: its policy stream (CAP_POLICY_<t>, version N = the Nth
 * message) folded into `policies` (one row per version, never changed) and one audit row per
 * change (`policy.changed`: who, why, the version and its digest; an empty `run_id`, `seq` =
 * minus the version), exactly once: each record is applied in a transaction with the policy
 * stream's checkpoint, under its own advisory lock. Postgres away means the same record is
 * tried again with backoff; a record that does not decode, or disagrees with its place in
 * the stream, becomes a dead_letters row (the policy service denies under it, too).
 */
import { createHash } from 'node:crypto';
import type { JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { db as schema, decode, ErrorCode, parsePolicyVersionRecord, SchemaError, Streams, Subjects, toErrorRecord, type TenantId } from '@capstan/schemas';
import type { Logger, ProjectionDb } from '@capstan/kit';
import { pgText, type AuditRow } from './projection.js';
import type { DeadLetterRow } from './apply.js';
import { followStream, type StreamFollower, type StreamMessage } from './follow.js';
import { lockSideStream, readSideCheckpoint, readSideStream, writeSideCheckpoint } from './side-stream.js';

export type PolicyRow = typeof schema.policies.$inferSelect;

/** The audit row kind of a new policy version. */
export const POLICY_AUDIT_KIND = 'policy.changed';
/** Rows about the policy are about no run. */
export const POLICY_AUDIT_RUN_ID = '';

/** A policy stream message as the projector receives it. */
export type PolicyMessage = StreamMessage;

/** What one stored version does to the projections (pure): its row and an audit row, or a dead letter. */
export function projectPolicyVersion(t: TenantId, m: PolicyMessage): { policy: PolicyRow; audit: AuditRow } | { deadLetter: DeadLetterRow } {
  try {
    const r = parsePolicyVersionRecord(decode(m.data));
    if (m.subject !== Subjects.policyVersions(t)) throw new SchemaError('policy version', '', `is stored on ${m.subject}`);
    if (r.version !== m.seq) throw new SchemaError('policy version', 'version', `is ${r.version}, but the record is message ${m.seq}`);
    if (createHash('sha256').update(r.text, 'utf8').digest('hex') !== r.sha256) throw new SchemaError('policy version', 'sha256', 'does not match the text');
    const at = new Date(r.at);
    const when = Number.isNaN(at.getTime()) ? m.time : at;
    const by = pgText(r.by);
    const reason = r.reason === undefined ? null : pgText(r.reason);
    return {
      policy: { tenant: t, version: r.version, sha256: r.sha256, by, reason, at: when, text: pgText(r.text), streamSeq: m.seq },
      audit: {
        tenant: t,
        runId: POLICY_AUDIT_RUN_ID,
        seq: -r.version,
        kind: POLICY_AUDIT_KIND,
        actor: by,
        detail: { version: r.version, sha256: r.sha256, reason, bytes: Buffer.byteLength(r.text, 'utf8') },
        at: when,
        streamSeq: m.seq,
      },
    };
  } catch (e) {
    const error = toErrorRecord(e, ErrorCode.DecodeFailed);
    return { deadLetter: { tenant: t, stream: Streams.policy(t), streamSeq: m.seq, subject: m.subject, code: pgText(error.code), message: pgText(error.message.slice(0, 1000)) } };
  }
}

async function lockPolicies(tx: ProjectionDb, t: TenantId): Promise<void> {
  await lockSideStream(tx, `capstan.projector.policy:${t}`);
}

export function readPolicyCheckpoint(tx: ProjectionDb, t: TenantId): Promise<number> {
  return readSideCheckpoint(tx, t, Streams.policy(t));
}

function writePolicyCheckpoint(tx: ProjectionDb, t: TenantId, seq: number): Promise<void> {
  return writeSideCheckpoint(tx, t, Streams.policy(t), seq);
}

/** Writes one version's rows; both tables only ever gain rows, so a re-applied version adds nothing. */
async function writePolicyVersion(tx: ProjectionDb, t: TenantId, m: PolicyMessage): Promise<void> {
  const p = projectPolicyVersion(t, m);
  if ('deadLetter' in p) {
    await tx.insert(schema.deadLetters).values(p.deadLetter).onConflictDoNothing();
    return;
  }
  await tx.insert(schema.policies).values(p.policy).onConflictDoNothing();
  await tx.insert(schema.auditLog).values(p.audit).onConflictDoNothing();
}

/** Applies one stored version exactly once (skipped at or below the checkpoint). */
export async function applyPolicyVersion(db: ProjectionDb, t: TenantId, m: PolicyMessage): Promise<boolean> {
  return db.transaction(async (tx) => {
    await lockPolicies(tx, t);
    if (m.seq <= (await readPolicyCheckpoint(tx, t))) return false;
    await writePolicyVersion(tx, t, m);
    await writePolicyCheckpoint(tx, t, m.seq);
    return true;
  });
}

/**
 * Re-reads a tenant's policy stream into `policies` in the caller's transaction. Rows are
 * immutable and found by their key, so nothing is deleted: missing rows are added.
 */
export async function rebuildPolicies(tx: ProjectionDb, jsm: JetStreamManager, t: TenantId): Promise<number> {
  await lockPolicies(tx, t);
  let applied = 0;
  const last = await readSideStream(jsm, Streams.policy(t), Subjects.policyVersions(t), async (m) => {
    await writePolicyVersion(tx, t, m);
    applied++;
  });
  if (last > 0) await writePolicyCheckpoint(tx, t, last);
  return applied;
}

export type PolicyFollower = StreamFollower;

/** Follows a tenant's policy stream into `policies` (see `followStream`). */
export function followPolicies(nc: NatsConnection, jsm: JetStreamManager, db: ProjectionDb, t: TenantId, log: Logger): PolicyFollower {
  return followStream({
    nc,
    jsm,
    stream: Streams.policy(t),
    subject: Subjects.policyVersions(t),
    checkpoint: () => readPolicyCheckpoint(db, t),
    apply: (m) => applyPolicyVersion(db, t, m),
    what: 'a policy version',
    log,
  });
}
