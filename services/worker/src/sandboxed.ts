/**
 * Modes 1–3 from the worker's side: the sandbox service runs the step; the worker holds
 * the request (key names, never values), has the step's lease issued by the secrets-lease
 * service, and decides a running mode-3b step's credential requests with the tenant's policy
 * — recording each answer on the run before any lease exists, and waiting for a person when
 * the policy says so. It gets metadata back, never output or values.
 */
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import { askPolicySigned, credentialAbout, execInSandbox, issueLease, proofRecord, publishDurably, readRun, type Logger, type NatsConnection, type Signer } from '@capstan/kit';
import {
  CapstanError,
  CommandVerb,
  encode,
  ErrorCode,
  MAX_ERROR_MESSAGE_CHARS,
  Mode,
  MsgIds,
  PolicyAction,
  PolicyVerdict,
  Subjects,
  type CommandOf,
  type CredentialRequest,
  type ErrorRecord,
  type JsonValue,
  type SignedWork,
  type TenantId,
  type WorkItem,
} from '@capstan/schemas';

export interface SandboxedDeps {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly tenant: TenantId;
  readonly workerId: string;
  readonly stallMs: number;
  /** Issue leases through the secrets-lease service (off: the sandbox reads a secrets file). */
  readonly leases: boolean;
  readonly approvalTtlMs: number;
  readonly stopping: AbortSignal;
  /** Signs lease requests and mode-3b answers as this worker. */
  readonly signer: Signer | undefined;
  /** The tenant's account key: a policy answer is believed only if its policy service signed it. */
  readonly account: string | undefined;
  /**
   * Records on the run that this worker holds the attempt (`step.started`, once): the
   * orchestrator takes a mode-3b answer only from the worker so recorded.
   */
  readonly announced: () => Promise<void>;
  readonly log: Logger;
}

/** How often a credential request waiting for a person looks for the decision. */
const APPROVAL_POLL_MS = 250;

export async function runSandboxed(d: SandboxedDeps, item: WorkItem, work: SignedWork): Promise<{ result: JsonValue } | { error: ErrorRecord }> {
  if (item.mode === Mode.Inline || !item.sandbox) {
    return { error: { code: ErrorCode.InvalidArgument, message: `step ${item.step} is mode ${item.mode} without a sandbox spec`, retryable: false } };
  }
  const { tenant: t } = d;
  const scope = { runId: item.runId, step: item.step, attempt: item.attempt };
  let leaseId: string | undefined;
  const keys = item.sandbox.secrets ?? [];
  if (d.leases && keys.length > 0) {
    try {
      leaseId = (await issueLease(d.nc, t, { ...scope, keys: [...keys] }, d.signer ? { signer: d.signer } : {})).leaseId;
    } catch (e) {
      return { error: { ...(CapstanError.is(e) ? e.toRecord() : { code: ErrorCode.Unavailable, message: String(e), retryable: true }) } };
    }
  }
  const jit = item.mode === Mode.Agent && item.sandbox.jit === true;
  const { result, error } = await execInSandbox(
    d.nc,
    t,
    {
      ...scope,
      workflow: item.workflow,
      mode: item.mode,
      spec: item.sandbox,
      timeoutMs: item.timeoutMs,
      input: item.input,
      ...(item.previous !== undefined ? { previous: item.previous } : {}),
      ...(leaseId ? { leaseId } : {}),
      // The orchestrator's signed item: the sandbox service checks it and runs only that.
      work,
    },
    { stallMs: d.stallMs, signal: d.stopping, ...(jit ? { onCredential: (r: CredentialRequest) => decideCredential(d, item, r) } : {}) },
  );
  if (error) return { error: result ? { ...error, message: `${error.message} [sandbox ${result.sandbox}, ${result.durationMs} ms]`.slice(0, MAX_ERROR_MESSAGE_CHARS) } : error };
  return { result: result as unknown as JsonValue };
}

/**
 * Mode 3b: the tenant's policy decides; the answer goes on the run first; then allow → a
 * lease for the one key; deny → refused; needs-approval → the run asks for a person and this
 * waits (up to the approval TTL) for their decision on the run's record.
 */
async function decideCredential(d: SandboxedDeps, item: WorkItem, r: CredentialRequest): Promise<{ leaseId?: string }> {
  const { tenant: t } = d;
  if (!d.account) throw new CapstanError(ErrorCode.Unproven, `credential ${r.name}: this worker knows no tenant account key to check the policy's answer with`, false);
  // The policy's signed answer goes with the command: the run records the policy's decision, not this worker's word.
  const { decision, signed } = await askPolicySigned(
    d.nc,
    t,
    [{ action: PolicyAction.RequestCredential, workflow: item.workflow, step: item.step, secret: r.name, worker: d.workerId }],
    { trust: { accounts: [d.account] }, about: credentialAbout(item.runId, item.step, item.attempt, r.name) },
  );
  const body: CommandOf<'credential'> = {
    runId: item.runId,
    step: item.step,
    attempt: item.attempt,
    name: r.name,
    reason: r.reason,
    decision: decision.decision,
    version: decision.version,
    policies: [...decision.policies].slice(0, 64),
    ...(decision.approvers ? { approvers: decision.approvers } : {}),
    ...(decision.decision === PolicyVerdict.NeedsApproval ? { expiresInMs: d.approvalTtlMs } : {}),
    answer: signed,
  };
  if (!d.signer) throw new CapstanError(ErrorCode.Unproven, `credential ${r.name}: this worker has no credential to sign its answer with, and the run takes none unsigned`, false);
  // In the stream before the answer, so the run knows this worker holds the attempt.
  await d.announced();
  const before = (await readRun(d.jsm, t, item.runId)).events.length;
  const subject = Subjects.command(t, CommandVerb.Credential);
  const data = encode(body);
  await publishDurably(d.nc, d.js, [
    {
      subject,
      data,
      msgId: MsgIds.command(CommandVerb.Credential, `${item.runId}:${item.step}:${item.attempt}:${r.name}:${before}`),
      headers: proofRecord(d.signer, subject, data),
    },
  ]);
  d.log.info({ runId: item.runId, step: item.step, key: r.name, decision: decision.decision, version: decision.version }, 'credential request decided');
  if (decision.decision === PolicyVerdict.Deny) {
    throw new CapstanError(
      ErrorCode.PolicyDenied,
      `credential ${r.name} is denied by policy version ${decision.version}${decision.policies.length ? ` (${decision.policies.join(', ')})` : ''}`,
      false,
    );
  }
  if (decision.decision === PolicyVerdict.NeedsApproval) await awaitApproval(d, item, r.name, before);
  if (!d.leases) return {};
  return { leaseId: (await issueLease(d.nc, t, { runId: item.runId, step: item.step, attempt: item.attempt, keys: [r.name] }, d.signer ? { signer: d.signer } : {})).leaseId };
}

async function awaitApproval(d: SandboxedDeps, item: WorkItem, name: string, from: number): Promise<void> {
  const deadline = Date.now() + Math.min(d.approvalTtlMs, item.timeoutMs);
  while (Date.now() < deadline && !d.stopping.aborted) {
    const { events } = await readRun(d.jsm, d.tenant, item.runId);
    for (const e of events.slice(from)) {
      if (e.type === 'approval.decided' && e.data.step === item.step) {
        if (e.data.decision === 'approve') return;
        throw new CapstanError(ErrorCode.ApprovalDenied, `credential ${name} was denied by ${e.data.by}${e.data.reason ? `: ${e.data.reason}` : ''}`, false);
      }
    }
    await new Promise((res) => setTimeout(res, APPROVAL_POLL_MS));
  }
  throw new CapstanError(ErrorCode.ApprovalExpired, `nobody approved credential ${name} in time`, false);
}
