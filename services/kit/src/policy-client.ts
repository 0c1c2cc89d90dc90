/**
 * The client side of the policy service (`cap.<t>.svc.policy.<verb>`, core NATS
 * request/reply). Decisions: `askPolicy` (the version in force) and `decideAt` (a recorded
 * version, for replay). Administration: `setPolicy`, `getPolicy`, `policyHistory`,
 * `testPolicy`.
 *
 * Nobody answering (no policy service, or not within `timeoutMs`) is a
 * `PolicyUnavailableError` (`policy_unavailable`, retryable): never read it as an allow. An
 * error the service answers with is rebuilt as a typed error by its code
 * (`policy_invalid` with Cedar's diagnostics, `policy_version_not_found`, `unknown_tenant`,
 * `schema_violation`, …).
 */
import { createHash } from 'node:crypto';
import {
  Role,
  UnprovenError,
  decode,
  encode,
  Headers,
  isPlainObject,
  parsePolicyReply,
  policyErrorFromWire,
  PolicyUnavailableError,
  PolicyVerb,
  Subjects,
  type PolicyDecision,
  type PolicyQuery,
  type PolicyReply,
  type PolicyRequest,
  type TenantId,
} from '@capstan/schemas';
import { headers as natsHeaders, type Msg } from '@nats-io/transport-node';
import type { NatsConnection } from './nats.js';
import { callService, refusalProofSubject } from './rpc.js';
import { verifyProof, type Trust } from './proof.js';

export interface PolicyCallOptions {
  /** Longest wait for the answer. Default 2 s (decisions) or 10 s (administration). */
  readonly timeoutMs?: number;
  /**
   * Believe only an answer the policy service signed (its user in the tenant's account):
   * a decision that will be recorded on a run is never taken on the word of whoever could
   * reach the requester's inbox.
   */
  readonly trust?: Trust;
}

/**
 * What the policy service signs an answer over, besides the answer itself: the request's
 * subject and a digest of the request, so an answer to one question is no answer to another.
 */
export function answerProofSubject(requestSubject: string, request: Uint8Array): string {
  return `${requestSubject}#${createHash('sha256').update(request).digest('hex')}`;
}

/**
 * One policy request through kit's request/reply helper (`rpc.ts`): the caller's trace
 * travels with it, no answer is `policy_unavailable`, and a refusal is its typed error,
 * whether the service put it in the error headers or, with Cedar's diagnostics, in the body.
 * With `trust`, only an answer the policy service signed is believed.
 */
/** Believes a reply only when the tenant's policy service signed it over `about` and its body. */
function signedByPolicy(msg: Msg, about: string, trust: Trust): void {
  const author = verifyProof(msg.headers, about, msg.data, trust);
  if (author.role !== Role.Policy) throw new UnprovenError(`${msg.subject}: the answer is signed by ${author.name} (${author.role ?? 'no role'}), not by the policy service`);
}

function call<V extends PolicyVerb>(
  nc: NatsConnection,
  tenant: TenantId,
  verb: V,
  body: PolicyRequest<V>,
  timeoutMs: number,
  trust?: Trust,
  keep?: (reply: Msg) => void,
): Promise<PolicyReply<V>> {
  const subject = Subjects.policy(tenant, verb);
  return callService(nc, {
    subject,
    body,
    timeoutMs,
    parse: (v) => parsePolicyReply(verb, isPlainObject(v) ? v : {}),
    unavailable: (why, cause) =>
      new PolicyUnavailableError(
        why.startsWith('no service') ? `no policy service answers for tenant ${tenant}: nothing is allowed until one does` : `the policy service, ${verb}: ${why}`,
        { cause },
      ),
    fromWire: policyErrorFromWire,
    ...(trust
      ? {
          checkReply: (msg) => {
            signedByPolicy(msg, answerProofSubject(subject, encode(body)), trust);
            keep?.(msg);
          },
          checkRefusal: (msg) => signedByPolicy(msg, refusalProofSubject(answerProofSubject(subject, encode(body)), msg.headers?.get(Headers.ErrorCode) ?? ''), trust),
        }
      : {}),
  });
}

/**
 * Asks the tenant's policy about one step's queries, under the version in force, and gets
 * their combined decision: deny if any query is denied; else needs-approval if any needs a
 * person (approvers of the first); else allow. A tenant without a policy gets deny, version 0.
 * @throws PolicyUnavailableError when no policy service answers in time (retry later).
 * @example
 * const d = await askPolicy(nc, tenant, [{ action: 'run-step', workflow: 'etl', step: 'load', mode: 2 },
 *   { action: 'lease-secret', workflow: 'etl', step: 'load', secret: 'DB_PASSWORD' }], { timeoutMs: 2000 });
 * if (d.decision !== 'allow') ...
 */
export function askPolicy(nc: NatsConnection, tenant: TenantId, queries: readonly PolicyQuery[], o: PolicyCallOptions = {}): Promise<PolicyDecision> {
  return call(nc, tenant, PolicyVerb.Decide, { queries: queries as unknown as Record<string, unknown>[] }, o.timeoutMs ?? 2000, o.trust);
}

/** What a mode-3b credential question is about, as its request names it (and the orchestrator checks). */
export function credentialAbout(runId: string, step: string, attempt: number, name: string): string {
  return `${runId}/${step}/${attempt}/${name}`;
}

/** The policy service's signed answer as received: what a worker forwards so its answer is the policy's, not its own. */
export interface SignedPolicyAnswer {
  readonly request: Uint8Array;
  readonly answer: Uint8Array;
  readonly signer: string;
  readonly signature: string;
}

/**
 * Like {@link askPolicy}, believing only the policy service's signed answer (`trust` is
 * required), and returning that answer as received too, for `about` (what the question is
 * about, signed over with it): the orchestrator checks it again before recording it.
 * @throws UnprovenError when the answer is not signed by the tenant's policy service
 */
export async function askPolicySigned(
  nc: NatsConnection,
  tenant: TenantId,
  queries: readonly PolicyQuery[],
  o: PolicyCallOptions & { readonly trust: Trust; readonly about: string },
): Promise<{ decision: PolicyDecision; signed: SignedPolicyAnswer }> {
  const body = { queries: queries as unknown as Record<string, unknown>[], about: o.about };
  let signed: SignedPolicyAnswer | undefined;
  const decision = await call(nc, tenant, PolicyVerb.Decide, body, o.timeoutMs ?? 2000, o.trust, (msg) => {
    signed = { request: encode(body), answer: msg.data, signer: msg.headers?.get(Headers.Signer) ?? '', signature: msg.headers?.get(Headers.Signature) ?? '' };
  });
  if (!signed) throw new UnprovenError(`${Subjects.policy(tenant, PolicyVerb.Decide)}: no signed answer`);
  return { decision, signed };
}

/**
 * Checks a forwarded policy answer: signed by the tenant's policy service over the request's
 * subject and digest, and returns the request and the decision it carries.
 * @throws UnprovenError when it is not the policy service's answer to that request
 */
export function checkSignedPolicyAnswer(tenant: TenantId, a: SignedPolicyAnswer, trust: Trust): { request: Record<string, unknown>; decision: PolicyDecision } {
  const subject = Subjects.policy(tenant, PolicyVerb.Decide);
  const h = natsHeaders();
  h.set(Headers.Signer, a.signer);
  h.set(Headers.Signature, a.signature);
  const author = verifyProof(h, answerProofSubject(subject, a.request), a.answer, trust);
  if (author.role !== Role.Policy) throw new UnprovenError(`${subject}: the forwarded answer is signed by ${author.name} (${author.role ?? 'no role'}), not by the policy service`);
  const request = decode(a.request);
  const reply = decode(a.answer);
  return { request: isPlainObject(request) ? request : {}, decision: parsePolicyReply(PolicyVerb.Decide, isPlainObject(reply) ? reply : {}) };
}

/**
 * Like {@link askPolicy}, under a given version (one recorded on a run), so a replay can check
 * whether that version still decides the same. Version 0 is the default deny.
 * @throws PolicyVersionNotFoundError for a version the tenant does not have;
 *   PolicyUnavailableError when no policy service answers in time.
 */
export function decideAt(nc: NatsConnection, tenant: TenantId, version: number, queries: readonly PolicyQuery[], o: PolicyCallOptions = {}): Promise<PolicyDecision> {
  return call(nc, tenant, PolicyVerb.Decide, { queries: queries as unknown as Record<string, unknown>[], version }, o.timeoutMs ?? 2000);
}

export interface SetPolicyInput {
  /** Cedar policy text, validated against Capstan's schema before anything is stored. */
  readonly text: string;
  /** Who sets it (recorded on the version and in the audit log). */
  readonly by: string;
  readonly reason?: string;
}

/**
 * Stores a new version of the tenant's policy (it is in force from the reply on). The same
 * text as the version in force records nothing (`unchanged: true`).
 * @throws PolicyInvalidError with Cedar's diagnostics when the text does not parse or
 *   validate: nothing was stored.
 */
export function setPolicy(nc: NatsConnection, tenant: TenantId, input: SetPolicyInput, o: PolicyCallOptions = {}): Promise<PolicyReply<'set'>> {
  const body = { text: input.text, by: input.by, ...(input.reason !== undefined ? { reason: input.reason } : {}) };
  return call(nc, tenant, PolicyVerb.Set, body, o.timeoutMs ?? 10_000);
}

/** The version in force (or `version`), with its text; `{ version: 0 }` when none is set. */
export function getPolicy(nc: NatsConnection, tenant: TenantId, version?: number, o: PolicyCallOptions = {}): Promise<PolicyReply<'get'>> {
  return call(nc, tenant, PolicyVerb.Get, version === undefined ? {} : { version }, o.timeoutMs ?? 10_000);
}

/** Every version (newest last, at most `limit`, default 1000), without texts. */
export function policyHistory(nc: NatsConnection, tenant: TenantId, limit?: number, o: PolicyCallOptions = {}): Promise<PolicyReply<'history'>> {
  return call(nc, tenant, PolicyVerb.History, limit === undefined ? {} : { limit }, o.timeoutMs ?? 10_000);
}

export interface TestPolicyInput {
  readonly queries: readonly (PolicyQuery | Readonly<Record<string, unknown>>)[];
  /** Decide under this stored version instead of the one in force. */
  readonly version?: number;
  /** Decide under this candidate text (validated, never stored). */
  readonly text?: string;
}

/** Each query's decision and the combined one, recording nothing. */
export function testPolicy(nc: NatsConnection, tenant: TenantId, input: TestPolicyInput, o: PolicyCallOptions = {}): Promise<PolicyReply<'test'>> {
  const body = {
    queries: input.queries as unknown as Record<string, unknown>[],
    ...(input.version !== undefined ? { version: input.version } : {}),
    ...(input.text !== undefined ? { text: input.text } : {}),
  };
  return call(nc, tenant, PolicyVerb.Test, body, o.timeoutMs ?? 10_000);
}
