/**
 * Worker admission, per tenant: a worker pulls a tenant's work only while its admission
 * record (`cap.<t>.fleet.<workerId>`, stream CAP_FLEET_<t>) says `approved`. It reads that
 * one subject's last record, and hears each new one as it is stored (a core subscription;
 * the record is read back from the stream), so an approval opens its pools and a
 * revocation closes them within moments. The record is the admin's statement; the server
 * enforces it too: a revoked worker's credential is revoked with it (`capstan workers
 * revoke`), so a worker that ignored its record could not pull anyway.
 *
 * Modes (`WORKER_ADMISSION`):
 * - `required` (the default): a worker with no record is `pending` and pulls nothing until
 *   an admin approves it (`capstan workers approve <id> --tenant <t>`, or the console);
 * - `auto` (`capstan dev`, tests): a worker with no record counts as approved. A revocation
 *   still stands. The worker never writes its own record (its credential may not).
 *
 * Failure semantics: a record that does not decode counts as not approved (fail closed).
 * Closing the pools stops their runners; steps in flight are stopped and reported failed
 * (retryable), so their runs retry them on other workers, as on any worker stop.
 */
import type { JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { Subjects, WorkerAdmissionState, type TenantId, CapstanError, ErrorCode } from '@capstan/schemas';
import { readAdmission, type Logger } from '@capstan/kit';
import { AdmissionMode } from './config.js';

export interface AdmissionGateOptions {
  readonly nc: NatsConnection;
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

/** How often the record is read again even without news (a missed message, a reconnect). */
const RECHECK_MS = 5000;

export async function startAdmissionGate(o: AdmissionGateOptions): Promise<AdmissionGate> {
  const { nc, jsm, tenant: t, workerId } = o;
  const log = o.log.child({ tenant: t, worker: workerId });
  let state: WorkerAdmissionState = WorkerAdmissionState.Pending;
  let opened = false;
  let stopped = false;
  // Transitions run one after another: an approval and a revocation in quick succession
  // open and then close, never both at once.
  let chain: Promise<void> = Promise.resolve();

  const become = (next: WorkerAdmissionState, why: string) => {
    chain = chain
      .then(async () => {
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
      })
      .catch((e: unknown) => log.error({ err: e }, 'changing admission failed'));
  };

  let warned = false;
  let failures = 0;
  /** Reads the last record and acts on it; reads are serialised so an older answer never wins. */
  let reading: Promise<void> = Promise.resolve();
  const check = () => {
    reading = reading.then(async () => {
      if (stopped) return;
      try {
        const a = await readAdmission(jsm, t, workerId);
        failures = 0;
        if (a) {
          become(a.state, `${a.state} by ${a.by}`);
        } else if (o.mode === AdmissionMode.Auto) {
          become(WorkerAdmissionState.Approved, 'no record, WORKER_ADMISSION=auto');
        } else {
          if (!warned)
            log.warn(`worker ${workerId} is not admitted in tenant ${t}: it pulls nothing until an admin approves it (capstan workers approve ${workerId} --tenant ${t})`);
          warned = true;
          become(WorkerAdmissionState.Pending, 'no record');
        }
      } catch (e) {
        if (CapstanError.is(e, ErrorCode.SchemaViolation)) {
          log.error({ err: e }, 'admission record does not decode: not admitted');
          become(WorkerAdmissionState.Pending, 'unreadable admission record');
          return;
        }
        // Said once at warn level: NATS away, or the tenant's fleet stream missing.
        if (failures++ === 0) log.warn({ err: e }, "cannot read this worker's admission; trying again");
      }
    });
    return reading;
  };

  const sub: Subscription = nc.subscribe(Subjects.fleet(t, workerId), { callback: () => void check() });
  const timer = setInterval(() => void check(), RECHECK_MS);
  timer.unref();
  await check();
  return {
    get state() {
      return state;
    },
    async stop() {
      stopped = true;
      clearInterval(timer);
      sub.unsubscribe();
      await reading;
      await chain;
    },
  };
}
