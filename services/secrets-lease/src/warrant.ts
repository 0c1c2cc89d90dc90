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
 *
 * The datasync service asks for its connections' credentials, for a pipeline step or a
 * preview. A step's lease is issued only when the run is a pipeline run that has not ended
 * and has scheduled that step's attempt, and only for key names the catalog records for the
 * connection that step opens (Retrieve: the run's source; Load: its Postgres destination's).
 * A preview has no run: its warrant is the person's signed preview request, forwarded as it
 * arrived (an operator, the console or an admin of the tenant, fresh, for that connection's
 * key names), and one signed request leases once.
 */
import { isTerminalEvent, previewRunId, readRun, verifyProof, type Author } from '@capstan/kit';
import {
  CatalogKind,
  DatasyncVerb,
  decode,
  EntityStatus,
  ErrorCode,
  Headers,
  LeaseDeniedError,
  Mode,
  parseCatalogRecord,
  parsePipelineInput,
  parsePreviewRequest,
  PIPELINE_WORKFLOW,
  pipelineHandler,
  PipelineStep,
  PolicyVerdict,
  Role,
  Streams,
  Subjects,
  type CatalogRecord,
  type LeaseRequest,
  type RunEvent,
  type RunId,
  type TenantId,
} from '@capstan/schemas';
import type { JetStreamManager } from '@nats-io/jetstream';
import { headers as natsHeaders } from '@nats-io/transport-node';

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

/** How far a preview request's date may be from this service's clock. */
export const PREVIEW_WARRANT_MS = 5 * 60_000;
/** Who may preview a connection (the server lets no other role publish the verb either). */
const PREVIEWING: ReadonlySet<string> = new Set([Role.Operator, Role.Console, Role.Admin]);

export interface DatasyncWarrantContext {
  readonly jsm: JetStreamManager;
  /** The tenant's account key: a forwarded preview request is believed only under it. */
  readonly account: string | undefined;
  readonly nowMs?: number;
}

/** The latest catalog record of a connection, as the catalog stream holds it. */
async function connectionRecord(jsm: JetStreamManager, t: TenantId, id: string): Promise<CatalogRecord> {
  let data: Uint8Array | undefined;
  try {
    data = (await jsm.direct.getMessage(Streams.catalog(t), { last_by_subj: Subjects.catalog(t, CatalogKind.Connection, id) }))?.data;
  } catch {
    data = undefined;
  }
  if (!data) refuse(`the catalog has no record of connection ${id}`);
  let record: CatalogRecord;
  try {
    record = parseCatalogRecord(decode(data));
  } catch {
    refuse(`the catalog record of connection ${id} does not parse`);
  }
  if (record.status !== EntityStatus.Active) refuse(`connection ${id} is deleted`);
  return record;
}

function withinKeys(record: CatalogRecord, keys: readonly string[]): void {
  const named = record.summary.keys;
  if (!named) refuse(`the catalog record of connection ${record.id} names no secret keys (recorded before key names were; put the connection again)`);
  const outside = keys.filter((k) => !named.includes(k));
  if (outside.length > 0) refuse(`connection ${record.id} does not name ${outside.join(', ')}`);
}

/**
 * Checks the datasync service's lease request against the run's record (a pipeline step) or
 * the forwarded signed request (a preview). Returns whether the scope is leased once (a preview).
 * @throws LeaseDeniedError (`lease_not_warranted`) naming what is missing
 */
export async function checkDatasyncWarrant(c: DatasyncWarrantContext, t: TenantId, req: LeaseRequest, author: Author): Promise<{ once: boolean }> {
  if (author.role !== Role.Datasync) refuse(`${author.name} (role ${author.role ?? 'none'}) is not the datasync service`);
  if (req.preview) {
    const w = req.preview;
    const subject = Subjects.datasync(t, DatasyncVerb.Preview);
    const h = natsHeaders();
    h.set(Headers.Signer, w.signer);
    h.set(Headers.Signature, w.signature);
    let asker: Author;
    try {
      asker = verifyProof(h, subject, w.request, { accounts: c.account ? [c.account] : [] });
    } catch (e) {
      refuse(`the preview request is not proven: ${(e as Error).message}`);
    }
    if (!PREVIEWING.has(asker.role ?? '')) refuse(`the preview request was signed by ${asker.name} (role ${asker.role ?? 'none'}), who may not preview`);
    let preview;
    try {
      preview = parsePreviewRequest(decode(w.request));
    } catch {
      refuse('the forwarded preview request does not parse');
    }
    if (preview.at === undefined) refuse('the preview request is not dated');
    const now = c.nowMs ?? Date.now();
    if (Math.abs(now - preview.at) > PREVIEW_WARRANT_MS) refuse(`the preview request was signed ${Math.round((now - preview.at) / 1000)} s from now: stale`);
    if (req.step !== 'preview' || req.attempt !== 1 || req.runId !== previewRunId(preview.at, w.signature))
      refuse('the lease scope is not the one the signed preview request names');
    withinKeys(await connectionRecord(c.jsm, t, preview.connection), req.keys);
    return { once: true };
  }
  const { events } = await readRun(c.jsm, t, req.runId);
  if (events.length === 0) refuse(`run ${req.runId} has no record`);
  const started = events[0];
  if (started?.type !== 'run.started' || started.data.workflow !== PIPELINE_WORKFLOW) refuse(`run ${req.runId} is not a pipeline run`);
  if (events.some(isTerminalEvent)) refuse(`run ${req.runId} has ended`);
  // Which connection the step opens follows from its recorded handler (in the built-in
  // workflow each step's name is its handler's last part).
  const scheduled = events.find(
    (e): e is Extract<RunEvent, { type: 'step.scheduled' }> => e.type === 'step.scheduled' && e.data.step === req.step && e.data.attempt === req.attempt,
  );
  if (!scheduled) refuse(`run ${req.runId} never scheduled step ${req.step} attempt ${req.attempt}`);
  let input;
  try {
    input = parsePipelineInput(started.data.input);
  } catch {
    refuse(`run ${req.runId}'s input is not a pipeline's`);
  }
  let connection: string;
  if (scheduled.data.handler === pipelineHandler(PipelineStep.Retrieve)) connection = input.connection;
  else if (scheduled.data.handler === pipelineHandler(PipelineStep.Load)) {
    let dest: CatalogRecord | undefined;
    try {
      const m = await c.jsm.direct.getMessage(Streams.catalog(t), { last_by_subj: Subjects.catalog(t, CatalogKind.Destination, input.destination) });
      dest = m ? parseCatalogRecord(decode(m.data)) : undefined;
    } catch {
      dest = undefined;
    }
    if (!dest || dest.status !== EntityStatus.Active || !dest.summary.connection) refuse(`destination ${input.destination} of run ${req.runId} is no Postgres connection`);
    connection = dest.summary.connection;
  } else refuse(`step ${req.step} (${scheduled.data.handler}) opens no connection`);
  withinKeys(await connectionRecord(c.jsm, t, connection), req.keys);
  return { once: false };
}
