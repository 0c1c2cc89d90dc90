/**
 * Audit-first external writes for mode-0 steps (`ctx.externalWrite`).
 *
 * A step that changes something outside Capstan (posts to an API, writes a row in the
 * tenant's database, sends a message) names the action, and the worker:
 * 1. derives the action's idempotency key from tenant + run + step + action name. Not from
 *    the attempt: every attempt of the step asks for the same action, so it gets the same key;
 * 2. appends the intent `{ kind: external_write.intent, target, action, key, runId, step,
 *    attempt }` to the audit store, or finds the intent an earlier attempt appended;
 * 3. only then calls `perform(key)`, which hands the key to the external system so that it
 *    applies the write once however often it is asked.
 * When the audit store does not take the intent, `perform` is not called and the step gets
 * an `AuditUnavailableError` (`audit_unavailable`, retryable): the run retries the step per
 * its policy. Nothing is ever written unaudited, not even when audit is not configured.
 */
import { createHash } from 'node:crypto';
import { ACTOR_PATTERN, InvalidArgumentError, type RunId, type TenantId, AuditKind } from '@capstan/schemas';
import { AuditAppend, inSpan, SpanKind, unavailableAuditSink, type AuditSink, type Logger } from '@capstan/kit';

/** `kind` of the audit row announcing an external write. */
export const EXTERNAL_WRITE_INTENT = AuditKind.ExternalWriteIntent;

/**
 * Performs an external write after its intent is in the audit log, and returns what
 * `perform` returns. `target` names the external system (`crm`, `billing-api`), `action`
 * the write within the step (`create-invoice`, or `notify:<recipientId>` for one of many);
 * both are recorded in the audit log, so they are names, never secrets or payloads. The same
 * action in a later attempt gets the same key: `perform` must pass it on (an
 * `Idempotency-Key` header, a unique column) so the external side deduplicates.
 * @throws AuditUnavailableError (`audit_unavailable`, retryable) when the intent could not be
 *   recorded: `perform` was not called.
 * @throws InvalidArgumentError (`invalid_argument`) for an empty or malformed target or action.
 * @example
 * const res = await ctx.externalWrite('billing-api', 'create-invoice', (key) =>
 *   fetch(url, { method: 'POST', headers: { 'Idempotency-Key': key }, body, signal: ctx.signal }));
 */
export type ExternalWrite = <T>(target: string, action: string, perform: (key: string) => Promise<T> | T) => Promise<T>;

/** The step an external write belongs to. */
export interface ExternalWriteScope {
  readonly tenant: TenantId;
  readonly runId: RunId;
  readonly step: string;
  readonly attempt: number;
  /** The step's signal: an attempt already timed out or stopped performs nothing more. */
  readonly signal: AbortSignal;
  readonly log: Logger;
}

const NAME_MAX = 200;
/** Tags the derivation, so a future scheme cannot produce a key this one produced. */
const KEY_SCHEME = 'capstan/external-write/v1';

function checkName(what: 'target' | 'action', v: unknown): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > NAME_MAX || !ACTOR_PATTERN.test(v)) {
    throw new InvalidArgumentError(
      `external write ${what} must be 1–${NAME_MAX} printable characters without control characters or surrounding spaces (got ${typeof v === 'string' ? JSON.stringify(v.slice(0, 64)) : typeof v})`,
    );
  }
  return v;
}

/**
 * The idempotency key of an action: 64 hex characters of SHA-256 over tenant, run, step and
 * action name (JSON-encoded, so no choice of names can make two tuples read the same). The
 * attempt is deliberately not part of it.
 * @throws InvalidArgumentError for a malformed action name.
 */
export function externalWriteKey(scope: { readonly tenant: TenantId; readonly runId: RunId; readonly step: string }, action: string): string {
  checkName('action', action);
  return createHash('sha256')
    .update(JSON.stringify([KEY_SCHEME, scope.tenant, scope.runId, scope.step, action]))
    .digest('hex');
}

/** The audit store a worker without `AUDIT_DATABASE_URL` has: it refuses every intent. */
export function auditNotConfigured(): AuditSink {
  return unavailableAuditSink('audit is not configured on this worker (set AUDIT_DATABASE_URL): external writes are refused, never done unaudited');
}

/** `ctx.externalWrite` for one attempt of one step. `actor`: the worker's id. */
export function bindExternalWrite(audit: AuditSink, actor: string, scope: ExternalWriteScope): ExternalWrite {
  return async <T>(target: string, action: string, perform: (key: string) => Promise<T> | T): Promise<T> => {
    checkName('target', target);
    const key = externalWriteKey(scope, action);
    scope.signal.throwIfAborted();
    // The audit write is a hop of its own in the step's trace.
    const appended = await inSpan(
      'worker',
      'audit.intent',
      { kind: SpanKind.CLIENT, attributes: { 'capstan.hop': 'audit', 'capstan.audit.kind': EXTERNAL_WRITE_INTENT, 'capstan.audit.target': target } },
      () =>
        audit.appendIntent({
          tenant: scope.tenant,
          runId: scope.runId,
          kind: EXTERNAL_WRITE_INTENT,
          key,
          actor,
          detail: { target, action, runId: scope.runId, step: scope.step, attempt: scope.attempt },
        }),
    );
    // The append may finish after the attempt timed out: its successor performs the write.
    scope.signal.throwIfAborted();
    scope.log.debug(
      { target, action, key, intent: appended },
      appended === AuditAppend.Appended ? 'external write intent recorded' : 'external write intent already recorded; performing again with its key',
    );
    return perform(key);
  };
}
