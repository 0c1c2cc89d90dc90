/**
 * Work items nobody but the orchestrator can write.
 *
 * The orchestrator derives each work item from the run's `step.scheduled` decision (and the
 * run's context) and signs it with its per-tenant identity (kit/proof.ts): the signature
 * covers the subject (tenant and pool) and every byte of the item. A worker, and after it
 * the sandbox service, execute an item only when that proof holds and its author carries the
 * orchestrator's role tag, issued by the tenant's own account. Since the signed bytes are
 * exactly what the orchestrator derived from the record, signature and role are the check
 * against the run: an item altered after signing (another command, another secret name,
 * another run) no longer verifies, and nothing else can sign as the orchestrator.
 *
 * The worker hands the sandbox service the item as it received it (`SignedWork`), so the
 * sandbox checks the orchestrator's proof itself rather than trusting the worker's copy.
 */
import { isDeepStrictEqual } from 'node:util';
import { headers as natsHeaders, type MsgHdrs } from '@nats-io/transport-node';
import { CapstanError, decode, Headers, parseWorkItem, Role, WorkRejectedError, type SandboxExecRequest, type SignedWork, type WorkItem } from '@capstan/schemas';
import { proofHeaders, verifyProof, type Signer } from './proof.js';

/** The proof headers of a work item (added to `h`, made when absent). */
export function signWork(signer: Signer, subject: string, data: Uint8Array, h?: MsgHdrs): MsgHdrs {
  return proofHeaders(signer, subject, data, h);
}

/**
 * The work item in `data` if the orchestrator of the tenant whose account is `account` signed
 * it for `subject`.
 * @throws WorkRejectedError (unsigned, untrusted or wrong signature, another author's role,
 *   an undecodable item); nothing in it may run
 */
export function checkWork(h: MsgHdrs | undefined, subject: string, data: Uint8Array, account: string | undefined): WorkItem {
  if (!account) throw new WorkRejectedError(`${subject}: this process knows no account key for the tenant, so no item can be proven`);
  let role: string | undefined;
  let name: string;
  try {
    const author = verifyProof(h, subject, data, { accounts: [account] });
    role = author.role;
    name = author.name;
  } catch (e) {
    throw new WorkRejectedError(CapstanError.is(e) ? e.message : String(e), { cause: e });
  }
  if (role !== Role.Orchestrator) throw new WorkRejectedError(`${subject}: signed by ${name} (role ${role ?? 'none'}), not by the orchestrator`);
  try {
    return parseWorkItem(decode(data));
  } catch (e) {
    throw new WorkRejectedError(`${subject}: the signed item does not decode (${CapstanError.is(e) ? e.code : 'error'})`, { cause: e });
  }
}

/** The item as received, for the sandbox service to check again. */
export function signedWork(h: MsgHdrs | undefined, subject: string, data: Uint8Array): SignedWork {
  return { subject, item: Buffer.from(data).toString('base64'), signer: h?.get(Headers.Signer) ?? '', signature: h?.get(Headers.Signature) ?? '' };
}

/**
 * The sandbox's check: the request carries a work item the orchestrator signed, and asks for
 * exactly that item's step (run, attempt, mode, spec with its secret names and egress,
 * timeout, input). Returns the item.
 * @throws WorkRejectedError
 */
export function checkExecRequest(req: SandboxExecRequest, account: string | undefined): WorkItem {
  if (!req.work) throw new WorkRejectedError(`step ${req.step} attempt ${req.attempt}: the request carries no signed work item`);
  const h = natsHeaders();
  h.set(Headers.Signer, req.work.signer);
  h.set(Headers.Signature, req.work.signature);
  const item = checkWork(h, req.work.subject, new Uint8Array(Buffer.from(req.work.item, 'base64')), account);
  const asked = {
    runId: req.runId,
    workflow: req.workflow,
    step: req.step,
    attempt: req.attempt,
    mode: req.mode,
    spec: req.spec,
    timeoutMs: req.timeoutMs,
    input: req.input,
    previous: req.previous,
  };
  const signed = {
    runId: item.runId,
    workflow: item.workflow,
    step: item.step,
    attempt: item.attempt,
    mode: item.mode,
    spec: item.sandbox,
    timeoutMs: item.timeoutMs,
    input: item.input,
    previous: item.previous,
  };
  for (const k of Object.keys(asked) as (keyof typeof asked)[]) {
    if (!isDeepStrictEqual(asked[k] ?? null, signed[k] ?? null))
      throw new WorkRejectedError(`step ${req.step} attempt ${req.attempt}: the request's ${k} is not the signed work item's`);
  }
  return item;
}
