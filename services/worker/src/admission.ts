/**
 * Worker admission, per tenant: a worker pulls a tenant's work only while its admission
 * record (`cap.<t>.fleet.<workerId>`, stream CAP_FLEET_<t>) says `approved`. It watches that
 * one subject with an ordered consumer (last record first, then every new one as it is
 * stored), so an approval opens its pools and a revocation closes them within moments.
 *
 * Modes (`WORKER_ADMISSION`):
 * - `required` (the default): a worker with no record is `pending` and pulls nothing until
 *   an admin approves it (`capstan workers approve <id> --tenant <t>`, or the console);
 * - `auto` (`capstan dev`, tests): a worker with no record approves itself once, on the
 *   record, as `by: auto`. A revocation still stands: auto never overwrites a record.
 *
 * Failure semantics: a record that does not decode counts as not approved (fail closed).
 * Closing the pools stops their runners; steps in flight are stopped and reported failed
 * (retryable), so their runs retry them on other workers, as on any worker stop.
 */
import { DeliverPolicy, JetStreamApiError, type ConsumerMessages, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { encode, Streams, Subjects, WorkerAdmissionState, type TenantId, type WorkerAdmissionRecord } from '@capstan/schemas';
import { admissionOf, readAdmission, type Logger } from '@capstan/kit';
import { AdmissionMode } from './config.js';

/** Who an automatic approval is recorded as. */
export const AUTO_APPROVER = 'auto';

export interface AdmissionGateOptions {
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly tenant: TenantId;
  readonly workerId: string;
  readonly mode: AdmissionMode;
  readonly log: Logger;
  /** Starts pulling the tenant's work (called when the worker becomes approved). */
  open(): Promise<void>;
  /** Stops pulling it (called when the worker is revoked, or its record becomes unreadable). */
  close(): Promise<void>;
}

export interface AdmissionGate {
  /** The worker's state in this tenant as last seen. */
  readonly state: WorkerAdmissionState;
  /** Stops watching; the pools stay as they are (the worker's own stop closes them). */
  stop(): Promise<void>;
}

/** How long to wait before watching again after the watch failed (no stream, NATS away). */
const REWATCH_MS = 2000;

export async function startAdmissionGate(o: AdmissionGateOptions): Promise<AdmissionGate> {
  const { js, jsm, tenant: t, workerId } = o;
  const log = o.log.child({ tenant: t, worker: workerId });
  let state: WorkerAdmissionState = WorkerAdmissionState.Pending;
  let opened = false;
  let stopped = false;
  let messages: ConsumerMessages | undefined;
  let retry: NodeJS.Timeout | undefined;
  // Transitions run one after another: an approval and a revocation in quick succession
  // open and then close, never both at once.
  let chain: Promise<void> = Promise.resolve();

  const become = (next: WorkerAdmissionState, why: string) => {
    chain = chain.then(async () => {
      if (stopped) return;
      state = next;
      if (next === WorkerAdmissionState.Approved && !opened) {
        await o.open();
        opened = true;
        log.info({ why }, 'worker admitted: pulling work');
      } else if (next !== WorkerAdmissionState.Approved && opened) {
        opened = false;
        log.warn({ state: next, why }, 'worker no longer admitted: stopped pulling work');
        await o.close();
      }
    }).catch((e: unknown) => log.error({ err: e }, 'changing admission failed'));
  };

  /** `auto`: the first start records an approval; an existing record (revoked too) stands. */
  async function approveSelf(): Promise<void> {
    if (await readAdmission(jsm, t, workerId)) return;
    const record: WorkerAdmissionRecord = { worker: workerId, state: WorkerAdmissionState.Approved, by: AUTO_APPROVER, reason: 'approved automatically (WORKER_ADMISSION=auto)' };
    try {
      await js.publish(Subjects.fleet(t, workerId), encode(record), { expect: { lastSubjectSequence: 0 } });
    } catch (e) {
      // Someone recorded a state first: theirs stands.
      if (!(e instanceof JetStreamApiError && e.code === 10071)) throw e;
    }
  }

  let failures = 0;
  async function watch(): Promise<void> {
    if (stopped) return;
    try {
      // Fails with 10059 when the tenant has no fleet stream (provisioned before admission existed).
      const consumer = await js.consumers.get(Streams.fleet(t), { filter_subjects: [Subjects.fleet(t, workerId)], deliver_policy: DeliverPolicy.LastPerSubject });
      if (o.mode === AdmissionMode.Auto) await approveSelf();
      messages = await consumer.consume();
      failures = 0;
    } catch (e) {
      const noStream = e instanceof JetStreamApiError && e.code === 10059;
      if (o.mode === AdmissionMode.Auto && noStream) {
        log.warn(`tenant ${t} has no fleet stream (capstan tenant add ${t} creates it): admitted without a record`);
        become(WorkerAdmissionState.Approved, 'auto, no fleet stream');
        return;
      }
      // Said once at warn level: a tenant that is not provisioned again would repeat it forever.
      const why = noStream ? `tenant ${t} has no fleet stream (capstan tenant add ${t} creates it)` : 'cannot watch this worker\'s admission';
      if (failures++ === 0) log.warn({ err: e, retryInMs: REWATCH_MS }, `${why}; not admitted, trying again`);
      else log.debug({ err: e }, why);
      retry = setTimeout(() => void watch(), REWATCH_MS);
      retry.unref();
      return;
    }
    if (o.mode === AdmissionMode.Required && !(await readAdmission(jsm, t, workerId).catch(() => undefined))) {
      log.warn(`worker ${workerId} is not admitted in tenant ${t}: it pulls nothing until an admin approves it (capstan workers approve ${workerId} --tenant ${t})`);
    }
    const iter = messages;
    void (async () => {
      for await (const m of iter) {
        try {
          const a = admissionOf(m, workerId);
          become(a.state, `${a.state} by ${a.by}`);
        } catch (e) {
          log.error({ err: e, seq: m.seq }, 'admission record does not decode: not admitted');
          become(WorkerAdmissionState.Pending, 'unreadable admission record');
        }
      }
    })()
      .catch((e: unknown) => log.warn({ err: e }, 'admission watch failed'))
      .finally(() => {
        if (stopped || messages !== iter) return;
        retry = setTimeout(() => void watch(), REWATCH_MS);
        retry.unref();
      });
  }

  await watch();
  return {
    get state() {
      return state;
    },
    async stop() {
      stopped = true;
      clearTimeout(retry);
      await messages?.close();
      await chain;
    },
  };
}
