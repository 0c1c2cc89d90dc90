/**
 * The effect of a `policy.requested` decision: ask the tenant's policy service and hand its
 * answer back to the run as a `policy` command, which the run records as `policy.decided`
 * (so replay uses the recorded answer, never a fresh evaluation). The question is asked
 * outside the tick: a slow or absent policy service delays only the runs that wait for it,
 * which stay `pending` and are asked again with backoff until it answers. A crash loses
 * nothing: recovery re-derives the tail's `policy.requested` and asks again; a second answer
 * for the same attempt is refused by the run as stale.
 *
 * Nobody else's answer is recorded. The question is a request only the policy service may
 * serve, and its answer must carry the policy service's signature over the question and the
 * answer (verified against the tenant's account key). The `policy` command is signed by
 * this orchestrator, and intake accepts it only so signed. Its message id carries the
 * signature, which nobody without the orchestrator's seed can compute: a forged command sent
 * first cannot make the real one a "duplicate" (Ed25519 signatures are deterministic, so a
 * republished real answer still is one).
 */
import type { JetStreamClient } from '@nats-io/jetstream';
import { askPolicy, hopTraceParent, inSpan, proofRecord, publishDurably, SpanKind, type Logger, type NatsConnection, type Signer, type Trust } from '@capstan/kit';
import {
  CommandVerb,
  encode,
  Headers,
  MsgIds,
  POLICY_DECISION_LIMITS,
  PolicyVerdict,
  Subjects,
  type CommandOf,
  type JsonValue,
  type PolicyDecision,
  type RunId,
  type RunTrace,
  type TenantId,
} from '@capstan/schemas';

export interface PolicyGateOptions {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly tenant: TenantId;
  /** `off`: every question is answered allow, version 0, on the record as checks-off. */
  readonly mode: 'on' | 'off';
  readonly approvalTtlMs: number;
  readonly timeoutMs: number;
  readonly log: Logger;
  /** The orchestrator's user in the tenant: signs the answers it records. */
  readonly signer: Signer;
  /** The tenant's account key: the policy service's answers must be signed by its user. */
  readonly trust: Trust;
  /** The run's trace: the question is asked inside its policy hop. */
  readonly traceOf?: (runId: RunId) => Promise<RunTrace | undefined>;
}

export interface PolicyGate {
  ask(runId: RunId, step: string, attempt: number, queries: readonly { [k: string]: JsonValue }[]): void;
  stop(): void;
}

const MAX_BACKOFF_MS = 10_000;

export function createPolicyGate(o: PolicyGateOptions): PolicyGate {
  const asking = new Set<string>();
  let stopped = false;

  async function answer(body: CommandOf<'policy'>): Promise<void> {
    const subject = Subjects.command(o.tenant, CommandVerb.Policy);
    const data = encode(body);
    const headers = proofRecord(o.signer, subject, data);
    const msgId = MsgIds.command(CommandVerb.Policy, `${body.runId}:${body.step}:${body.attempt}:${headers[Headers.Signature].slice(0, 22)}`);
    await publishDurably(o.nc, o.js, [{ subject, data, headers, msgId }]);
  }

  async function run(runId: RunId, step: string, attempt: number, queries: readonly { [k: string]: JsonValue }[]): Promise<void> {
    const base = { runId, step, attempt };
    if (o.mode === 'off') {
      await answer({ ...base, decision: PolicyVerdict.Allow, version: 0, policies: ['policy-checks-off'] });
      return;
    }
    let delay = 250;
    for (;;) {
      if (stopped) return;
      try {
        const d = await ask(runId, step, attempt, queries);
        await answer({
          ...base,
          decision: d.decision,
          version: d.version,
          policies: [...d.policies].slice(0, POLICY_DECISION_LIMITS.policies),
          ...(d.approvers ? { approvers: d.approvers } : {}),
          ...(d.selfApproval === true ? { selfApproval: true as const } : {}),
          ...(d.errors?.length ? { errors: d.errors.slice(0, POLICY_DECISION_LIMITS.errors).map((e) => e.slice(0, POLICY_DECISION_LIMITS.errorChars)) } : {}),
          ...(d.decision === PolicyVerdict.NeedsApproval ? { expiresInMs: o.approvalTtlMs } : {}),
        });
        return;
      } catch (e) {
        o.log.warn({ err: e, runId, step, retryInMs: delay }, 'policy question not answered; asking again');
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(MAX_BACKOFF_MS, delay * 2);
      }
    }
  }

  /** Asks the policy service, inside a client span under the run's policy hop when the run is traced. */
  async function ask(runId: RunId, step: string, attempt: number, queries: readonly { [k: string]: JsonValue }[]): Promise<PolicyDecision> {
    const call = () => askPolicy(o.nc, o.tenant, queries as never, { timeoutMs: o.timeoutMs, trust: o.trust });
    const trace = await o.traceOf?.(runId);
    if (!trace) return call();
    const attributes = { 'capstan.tenant': o.tenant, 'capstan.run_id': runId, 'capstan.step': step, 'capstan.attempt': attempt };
    return inSpan('orchestrator', 'policy.ask', { kind: SpanKind.CLIENT, parent: hopTraceParent(trace, runId, `policy:${step}:${attempt}`), attributes }, call);
  }

  return {
    ask(runId, step, attempt, queries) {
      const key = `${runId}:${step}:${attempt}`;
      if (asking.has(key)) return;
      asking.add(key);
      void run(runId, step, attempt, queries)
        .catch((e: unknown) => o.log.error({ err: e, runId, step }, 'policy answer could not be recorded; recovery will ask again'))
        .finally(() => asking.delete(key));
    },
    stop() {
      stopped = true;
    },
  };
}
