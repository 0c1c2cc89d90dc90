/**
 * The lease ledger (`leases`, `lease_revocations`), with one authority clock: the
 * database's `clock_timestamp()`. This process's clock decides nothing: a lease's expiry is
 * set and judged by Postgres, so a service whose clock jumps can neither lengthen nor
 * shorten a lease.
 *
 * - Issue: one row per lease, refused when the run is revoked. It waits for its claim for
 *   the claim window (the step may queue for a sandbox, or wait for a cold start). A
 *   worker's lease is issued once per attempt and key (`once`): a second ask for a key the
 *   attempt holds a lease of already, whoever asks, is refused with `lease_already_issued`
 *   (the run's audit lock makes the look and the insert one step).
 * - Claim: the sandbox that holds a container for the attempt claims the lease, and the
 *   lease's TTL counts from there (`expires_at = clock_timestamp() + ttl`). One claim.
 * - Bound: a lease names the one key that may claim and redeem it (`redeemer`, fixed at
 *   issue: the tenant's sandbox service as registered, or the service that issued it for
 *   itself); anyone else is refused with `lease_wrong_redeemer` and learns nothing more.
 * - Redeem: one `UPDATE … WHERE redeemed_at IS NULL AND revoked_at IS NULL AND expires_at >
 *   clock_timestamp() AND <scope matches> AND <run not revoked> RETURNING`: of any number of
 *   racing redeemers, the row lock lets exactly one through.
 * - Revoke: marks the run revoked (later issues are refused, open leases stop redeeming at
 *   once) and stamps its open leases. A run that ends is revoked with the run stream
 *   sequence of its end; a later `run.retried` reopens it. A revocation by request stands.
 *
 * Each of these writes its audit row in the same transaction as its change, so either both
 * are committed or neither is (audit first). Refusals are audited too (`lease.denied`).
 */
import { randomBytes } from 'node:crypto';
import { sql } from 'drizzle-orm';
import type { Database, ProjectionDb } from '@capstan/kit';
import { CapstanError, ErrorCode, LeaseDeniedError, type LeaseDenialCode, type RunId, type TenantId } from '@capstan/schemas';
import { audit, lockRunAudit, rows, SecretsAudit, SERVICE_ACTOR, textArray, type Executor } from './db.js';

export interface LeaseScope {
  readonly runId: RunId;
  readonly step: string;
  readonly attempt: number;
}

export interface IssuedLease {
  readonly leaseId: string;
  readonly keys: readonly string[];
  readonly expiresAt: Date;
}

/** How a revocation came about. */
export type RevokeCause =
  | { readonly kind: 'requested'; readonly by: string; readonly reason?: string }
  /** A run event: `run.completed`/`run.failed`/`run.cancelled` revoke, `run.retried` reopens. */
  | { readonly kind: 'run-event'; readonly event: string; readonly streamSeq: number };

export interface LeaseLedger {
  /**
   * `ttlMs` counts from the claim; until then the lease waits `claimWindowMs` (at least the TTL).
   * With `once`, no key of `keys` may have been leased for the attempt before.
   * @throws LeaseDeniedError (`lease_revoked`) when the run is revoked; (`lease_already_issued`) with `once`
   */
  issue(t: TenantId, scope: LeaseScope, keys: readonly string[], ttlMs: number, claimWindowMs?: number, redeemer?: string, once?: boolean): Promise<IssuedLease>;
  /**
   * Claims the lease for `sandbox` (a container name): its TTL starts now. Returns the new expiry.
   * @throws LeaseDeniedError (`lease_used` when claimed or redeemed already, `lease_expired` past its claim window, …)
   */
  claim(t: TenantId, leaseId: string, scope: LeaseScope, sandbox: string, by: string): Promise<Date>;
  /**
   * Redeems once. `read` fetches the values of the lease's keys inside the claiming
   * transaction (`within`), so a store failure undoes the claim: the lease stays unredeemed.
   * The values are returned only if the claim committed together with its audit row.
   * @throws LeaseDeniedError; whatever `read` throws
   */
  redeem(
    t: TenantId,
    leaseId: string,
    scope: LeaseScope,
    by: string,
    read: (keys: readonly string[], within: Executor) => Promise<Record<string, string>>,
  ): Promise<{ keys: readonly string[]; values: Record<string, string> }>;
  /** Records a refusal that happened before the ledger was asked (an unknown key, say). */
  deny(t: TenantId, runId: RunId, leaseId: string, code: string, detail: Record<string, string | number | string[]>): Promise<void>;
  /** Revokes the run's open leases (and later ones, unless reopened). Returns how many were open. */
  revoke(t: TenantId, runId: RunId, cause: RevokeCause): Promise<number>;
}

interface LeaseRow {
  id: string;
  run_id: string;
  step: string;
  attempt: number;
  keys: string[] | string;
  used: boolean;
  claimed: boolean;
  revoked: boolean;
  expired: boolean;
  redeemer: string | null;
}

/** Postgres text[] arrives as an array from `pg` and PGlite; a literal `{a,b}` is read too. */
function keysOf(v: string[] | string): string[] {
  if (Array.isArray(v)) return v;
  return v
    .replace(/^\{|\}$/g, '')
    .split(',')
    .filter(Boolean);
}

/** Why a lease cannot be redeemed for `scope`, by the database clock; undefined when it can. */
function judge(row: LeaseRow | undefined, scope: LeaseScope, by?: string): LeaseDenialCode | undefined {
  if (!row) return ErrorCode.LeaseNotFound;
  // Scope first: a caller with the wrong scope learns nothing about the lease's state.
  if (row.run_id !== scope.runId || row.step !== scope.step || Number(row.attempt) !== scope.attempt) return ErrorCode.LeaseScopeMismatch;
  // Then who asks: only the key the lease was bound to when it was issued.
  if (by !== undefined && row.redeemer !== by) return ErrorCode.LeaseWrongRedeemer;
  if (row.used) return ErrorCode.LeaseUsed;
  if (row.revoked) return ErrorCode.LeaseRevoked;
  if (row.expired) return ErrorCode.LeaseExpired;
  return undefined;
}

const runRevoked = (t: TenantId, runId: string) => sql`exists (select 1 from lease_revocations r where r.tenant = ${t} and r.run_id = ${runId} and r.revoked)`;

/** 128 random bits, base64url (22 characters). */
export function newLeaseId(): string {
  return randomBytes(16).toString('base64url');
}

export function createLeaseLedger(d: Database): LeaseLedger {
  const db = d.db;

  const look = async (x: ProjectionDb, t: TenantId, leaseId: string): Promise<LeaseRow | undefined> =>
    (
      await rows<LeaseRow>(
        x,
        sql`select id, run_id, step, attempt, keys, redeemed_at is not null as used, claimed_at is not null as claimed,
                   (revoked_at is not null or exists (select 1 from lease_revocations r where r.tenant = leases.tenant and r.run_id = leases.run_id and r.revoked)) as revoked,
                   expires_at <= clock_timestamp() as expired, redeemer
              from leases where id = ${leaseId} and tenant = ${t}`,
      )
    )[0];

  async function deny(t: TenantId, runId: RunId, leaseId: string, code: string, detail: Record<string, string | number | string[]>): Promise<void> {
    await db.transaction(async (tx) => {
      await lockRunAudit(tx, t, runId);
      await audit(tx, t, runId, SecretsAudit.LeaseDenied, SERVICE_ACTOR, { leaseId, code, ...detail });
    });
  }

  /** The audit row of a refusal: under the lease's own run when the lease exists, else the asker's. */
  function denial(leaseId: string, scope: LeaseScope, row: LeaseRow | undefined, code: LeaseDenialCode): { runId: RunId; detail: Record<string, string | number | string[]> } {
    return {
      runId: (row?.run_id ?? scope.runId) as RunId,
      detail: {
        leaseId,
        code,
        keys: row ? keysOf(row.keys) : [],
        step: scope.step,
        attempt: scope.attempt,
        ...(row && row.run_id !== scope.runId ? { askedRunId: scope.runId } : {}),
      },
    };
  }

  /** The claim or redemption matched no row: records why (the lease as it is now), inside its transaction. */
  async function refusedWithin(
    tx: ProjectionDb,
    t: TenantId,
    leaseId: string,
    scope: LeaseScope,
    by: string,
    extra: Record<string, string> = {},
  ): Promise<{ code: LeaseDenialCode }> {
    const after = await look(tx, t, leaseId);
    const code = judge(after, scope, by) ?? ErrorCode.LeaseUsed;
    const d = denial(leaseId, scope, after, code);
    if (d.runId !== scope.runId) await lockRunAudit(tx, t, d.runId);
    await audit(tx, t, d.runId, SecretsAudit.LeaseDenied, SERVICE_ACTOR, { ...d.detail, ...extra });
    return { code };
  }

  return {
    async issue(t, scope, keys, ttlMs, claimWindowMs = ttlMs, redeemer, once = false) {
      const leaseId = newLeaseId();
      const windowMs = Math.max(ttlMs, claimWindowMs);
      const out = await db.transaction(async (tx): Promise<IssuedLease | LeaseDenialCode> => {
        await lockRunAudit(tx, t, scope.runId);
        if (once) {
          const held = await rows<{ keys: string[] | string }>(
            tx,
            sql`select keys from leases where tenant = ${t} and run_id = ${scope.runId} and step = ${scope.step} and attempt = ${scope.attempt} and keys && ${textArray(keys)}`,
          );
          if (held.length > 0) {
            const again = keys.filter((k) => held.some((r) => keysOf(r.keys).includes(k)));
            await audit(tx, t, scope.runId, SecretsAudit.LeaseDenied, SERVICE_ACTOR, {
              leaseId: null,
              code: ErrorCode.LeaseAlreadyIssued,
              keys: again,
              step: scope.step,
              attempt: scope.attempt,
            });
            return ErrorCode.LeaseAlreadyIssued;
          }
        }
        const [row] = await rows<{ expires_at: Date | string }>(
          tx,
          sql`insert into leases (id, tenant, run_id, step, attempt, keys, issued_at, expires_at, ttl_ms, redeemer)
              select ${leaseId}, ${t}, ${scope.runId}, ${scope.step}, ${scope.attempt}, ${textArray(keys)}, clock_timestamp(), clock_timestamp() + ${windowMs} * interval '1 millisecond', ${ttlMs}, ${redeemer ?? null}
              where not ${runRevoked(t, scope.runId)}
              returning expires_at`,
        );
        if (!row) {
          await audit(tx, t, scope.runId, SecretsAudit.LeaseDenied, SERVICE_ACTOR, {
            leaseId: null,
            code: ErrorCode.LeaseRevoked,
            keys: [...keys],
            step: scope.step,
            attempt: scope.attempt,
          });
          return ErrorCode.LeaseRevoked;
        }
        await audit(tx, t, scope.runId, SecretsAudit.LeaseIssued, SERVICE_ACTOR, {
          leaseId,
          keys: [...keys],
          step: scope.step,
          attempt: scope.attempt,
          ttlMs,
          claimWindowMs: windowMs,
        });
        return { leaseId, keys, expiresAt: row.expires_at instanceof Date ? row.expires_at : new Date(row.expires_at) };
      });
      if (out === ErrorCode.LeaseRevoked) throw new LeaseDeniedError(out, '', `run ${scope.runId} is revoked (revoked by request, or ended): no lease is issued for it`);
      if (typeof out === 'string')
        throw new LeaseDeniedError(out, '', `step ${scope.step} attempt ${scope.attempt} of run ${scope.runId} was leased these keys already: each key once per attempt`);
      return out;
    },

    async claim(t, leaseId, scope, sandbox, by) {
      const before = await look(db, t, leaseId);
      const early = judge(before, scope, by) ?? (before?.claimed ? ErrorCode.LeaseUsed : undefined);
      if (early || !before) {
        const { runId, detail } = denial(leaseId, scope, before, early ?? ErrorCode.LeaseNotFound);
        await deny(t, runId, leaseId, detail['code'] as string, { ...detail, sandbox });
        throw new LeaseDeniedError(early ?? ErrorCode.LeaseNotFound, leaseId);
      }
      const outcome = await db.transaction(async (tx): Promise<{ expiresAt: Date } | { code: LeaseDenialCode }> => {
        await lockRunAudit(tx, t, scope.runId);
        // Leases issued before TTLs counted from the claim have no ttl_ms: the old default.
        const [row] = await rows<{ expires_at: Date | string }>(
          tx,
          sql`update leases set claimed_at = clock_timestamp(), expires_at = clock_timestamp() + coalesce(ttl_ms, 30000) * interval '1 millisecond'
               where id = ${leaseId} and tenant = ${t} and run_id = ${scope.runId} and step = ${scope.step} and attempt = ${scope.attempt}
                 and claimed_at is null and redeemed_at is null and revoked_at is null and expires_at > clock_timestamp()
                 and redeemer = ${by}
                 and not ${runRevoked(t, scope.runId)}
              returning expires_at`,
        );
        if (!row) return refusedWithin(tx, t, leaseId, scope, by, { sandbox });
        await audit(tx, t, scope.runId, SecretsAudit.LeaseClaimed, SERVICE_ACTOR, { leaseId, keys: keysOf(before.keys), step: scope.step, attempt: scope.attempt, sandbox });
        return { expiresAt: row.expires_at instanceof Date ? row.expires_at : new Date(row.expires_at) };
      });
      if ('code' in outcome) throw new LeaseDeniedError(outcome.code, leaseId);
      return outcome.expiresAt;
    },

    async redeem(t, leaseId, scope, by, read) {
      // A cheap look first: a late, repeated or foreign redeemer stops here, with no lock taken.
      const before = await look(db, t, leaseId);
      const early = judge(before, scope, by);
      if (early || !before) {
        const { runId, detail } = denial(leaseId, scope, before, early ?? ErrorCode.LeaseNotFound);
        await deny(t, runId, leaseId, detail['code'] as string, detail);
        throw new LeaseDeniedError(early ?? ErrorCode.LeaseNotFound, leaseId);
      }
      const keys = keysOf(before.keys);
      let readFailed: Error | undefined;
      const outcome = await db
        .transaction(async (tx): Promise<{ values: Record<string, string> } | { code: LeaseDenialCode }> => {
          // Racing redeemers of a run queue here; the row lock of the UPDATE decides among them.
          await lockRunAudit(tx, t, scope.runId);
          const [row] = await rows<{ id: string }>(
            tx,
            sql`update leases set redeemed_at = clock_timestamp(), claimed_at = coalesce(claimed_at, clock_timestamp())
                 where id = ${leaseId} and tenant = ${t} and run_id = ${scope.runId} and step = ${scope.step} and attempt = ${scope.attempt}
                   and redeemed_at is null and revoked_at is null and expires_at > clock_timestamp()
                   and redeemer = ${by}
                   and not ${runRevoked(t, scope.runId)}
                returning id`,
          );
          if (!row) return refusedWithin(tx, t, leaseId, scope, by);
          let values: Record<string, string>;
          try {
            values = await read(keys, tx);
          } catch (e) {
            readFailed = e instanceof Error ? e : new Error(String(e));
            throw readFailed;
          }
          await audit(tx, t, scope.runId, SecretsAudit.LeaseRedeemed, SERVICE_ACTOR, { leaseId, keys, step: scope.step, attempt: scope.attempt });
          return { values };
        })
        .catch(async (e: unknown) => {
          // The store could not give the values: the claim is undone; the refusal is audited.
          if (readFailed === undefined) throw e;
          await deny(t, scope.runId, leaseId, CapstanError.is(readFailed) ? readFailed.code : 'read_failed', { keys, step: scope.step, attempt: scope.attempt });
          throw readFailed;
        });
      if ('code' in outcome) throw new LeaseDeniedError(outcome.code, leaseId);
      return { keys, values: outcome.values };
    },

    deny,

    async revoke(t, runId, cause) {
      return db.transaction(async (tx) => {
        await lockRunAudit(tx, t, runId);
        let revoked: boolean;
        if (cause.kind === 'requested') {
          await tx.execute(sql`insert into lease_revocations (tenant, run_id, revoked, reason, stream_seq, changed_at)
                                values (${t}, ${runId}, true, 'requested', null, clock_timestamp())
                                on conflict (tenant, run_id) do update set revoked = true, reason = 'requested', stream_seq = null, changed_at = clock_timestamp()`);
          revoked = true;
        } else {
          const reopen = cause.event === 'run.retried';
          // A later event of the run wins, whatever order events are handled in; a
          // revocation by request (no stream_seq) is never lifted by one.
          const changed = await rows<{ revoked: boolean }>(
            tx,
            sql`insert into lease_revocations (tenant, run_id, revoked, reason, stream_seq, changed_at)
                values (${t}, ${runId}, ${!reopen}, ${cause.event}, ${cause.streamSeq}, clock_timestamp())
                on conflict (tenant, run_id) do update set revoked = excluded.revoked, reason = excluded.reason, stream_seq = excluded.stream_seq, changed_at = excluded.changed_at
                  where lease_revocations.stream_seq is not null and lease_revocations.stream_seq < excluded.stream_seq
                returning revoked`,
          );
          if (reopen) {
            if (changed.length > 0) await audit(tx, t, runId, SecretsAudit.LeaseReopened, SERVICE_ACTOR, { reason: cause.event, streamSeq: cause.streamSeq });
            return 0;
          }
          const [state] = await rows<{ revoked: boolean }>(tx, sql`select revoked from lease_revocations where tenant = ${t} and run_id = ${runId}`);
          revoked = state?.revoked === true;
        }
        if (!revoked) return 0;
        const open = await rows<{ id: string; keys: string[] | string }>(
          tx,
          sql`update leases set revoked_at = clock_timestamp()
               where tenant = ${t} and run_id = ${runId} and redeemed_at is null and revoked_at is null
              returning id, keys`,
        );
        // A run that ends with no lease open leaves no audit row; a request always does.
        if (open.length > 0 || cause.kind === 'requested') {
          await audit(tx, t, runId, SecretsAudit.LeaseRevoked, cause.kind === 'requested' ? cause.by : SERVICE_ACTOR, {
            reason: cause.kind === 'requested' ? (cause.reason ?? 'requested') : cause.event,
            leases: open.map((l) => l.id),
            keys: [...new Set(open.flatMap((l) => keysOf(l.keys)))].sort(),
          });
        }
        return open.length;
      });
    },
  };
}
