/**
 * What warrants a lease: the run's own record, never the asker's word.
 *
 * A worker asks for a lease of (run, step, attempt, key names). It is issued only when the
 * run's stream holds that attempt's `step.scheduled` (a sandboxed step is scheduled only
 * after its recorded policy decision allowed it, or a person approved it), the worker serves
 * the step's pool (its credential's pool tags), and every key is either among the names the
 * step declared (`sandbox.secrets`) or, for a mode-3b step, a name whose
 * `credential.decided` for this attempt allowed it (or a person approved it after). The
 * lease is then bound to the tenant's sandbox service as the registry names it: only that
 * key claims and redeems it.
 */
import { readRun, type Author } from '@capstan/kit';
import { ErrorCode, LeaseDeniedError, Mode, PolicyVerdict, Role, type RunEvent, type RunId, type TenantId } from '@capstan/schemas';
import type { JetStreamManager } from '@nats-io/jetstream';

export interface LeaseAsk {
  readonly runId: RunId;
  readonly step: string;
  readonly attempt: number;
  readonly keys: readonly string[];
}

function refuse(why: string): never {
  throw new LeaseDeniedError(ErrorCode.LeaseNotWarranted, '', `lease refused: ${why}`);
}

/**
 * Checks a worker's lease request (its credential's pools among the author's tags) against the run's record.
 * @throws LeaseDeniedError (`lease_not_warranted`) naming what the record lacks
 */
export async function checkWarrant(jsm: JetStreamManager, t: TenantId, ask: LeaseAsk, author: Author): Promise<void> {
  if (author.role !== Role.Worker) refuse(`${author.name} (role ${author.role ?? 'none'}) is not a worker`);
  const { events } = await readRun(jsm, t, ask.runId);
  if (events.length === 0) refuse(`run ${ask.runId} has no record`);
  const scheduled = events.find(
    (e): e is Extract<RunEvent, { type: 'step.scheduled' }> => e.type === 'step.scheduled' && e.data.step === ask.step && e.data.attempt === ask.attempt,
  );
  if (!scheduled) refuse(`run ${ask.runId} never scheduled step ${ask.step} attempt ${ask.attempt}`);
  const d = scheduled.data;
  const spec = d.sandbox;
  if (d.mode === Mode.Inline || !spec) refuse(`step ${ask.step} is not sandboxed: it holds no secrets`);
  if (!author.pools.includes(d.pool)) refuse(`worker ${author.name} does not serve pool ${d.pool} of step ${ask.step}`);
  const declared = new Set(spec.secrets ?? []);
  const undeclared = ask.keys.filter((k) => !declared.has(k) && !(d.mode === Mode.Agent && spec.jit === true && credentialAllowed(events, ask, k)));
  if (undeclared.length > 0) refuse(`step ${ask.step} attempt ${ask.attempt} did not declare (or its policy did not allow) ${undeclared.join(', ')}`);
}

/** Mode 3b: the attempt's recorded credential decision for `name` allows it (or a person approved it since). */
function credentialAllowed(events: readonly RunEvent[], ask: LeaseAsk, name: string): boolean {
  let allowed = false;
  let waiting = false;
  for (const e of events) {
    if (e.type === 'credential.decided' && e.data.step === ask.step && e.data.attempt === ask.attempt && e.data.name === name) {
      allowed = e.data.decision === PolicyVerdict.Allow;
      waiting = e.data.decision === PolicyVerdict.NeedsApproval;
    } else if (waiting && e.type === 'approval.decided' && e.data.step === ask.step) {
      allowed = e.data.decision === 'approve';
      waiting = false;
    }
  }
  return allowed;
}
