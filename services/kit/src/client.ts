/**
 * A small TypeScript client for Capstan's intake and run streams: what the CLI uses, and
 * what an application embeds. Any NATS client can do the same by following docs/intake.md.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, DeliverPolicy, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import {
  CommandVerb,
  encode,
  MsgIds,
  parseTenantId,
  parseRunId,
  Streams,
  Subjects,
  UnavailableError,
  type JsonValue,
  type RunEvent,
  type RunId,
} from '@capstan/schemas';
import { decodeEvent, readRun } from './run-log.js';
import { newRunId } from './ids.js';

export interface SubmitOptions {
  readonly input?: { [k: string]: JsonValue };
  readonly runId?: RunId;
  readonly idempotencyKey?: string;
}

const TERMINAL = new Set(['run.completed', 'run.failed', 'run.cancelled']);

export interface CapstanClient {
  /** Publishes a submit and returns the run id once JetStream has stored the command. */
  submit(tenant: string, workflow: string, opts?: SubmitOptions): Promise<RunId>;
  cancel(tenant: string, runId: string, reason?: string): Promise<void>;
  signal(tenant: string, runId: string, name: string, payload?: JsonValue): Promise<void>;
  events(tenant: string, runId: string): Promise<RunEvent[]>;
  /** Resolves with the run's terminal event, or rejects with UnavailableError after `timeoutMs`. */
  waitForEnd(tenant: string, runId: string, timeoutMs?: number): Promise<RunEvent>;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
}

export async function createClient(nc: NatsConnection): Promise<CapstanClient> {
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  return {
    js,
    jsm,
    async submit(tenant, workflow, opts = {}) {
      const t = parseTenantId(tenant);
      const runId = opts.runId ?? newRunId();
      const body = {
        workflow,
        runId,
        ...(opts.input ? { input: opts.input } : {}),
        ...(opts.idempotencyKey ? { idempotencyKey: opts.idempotencyKey } : {}),
      };
      await js.publish(Subjects.command(t, CommandVerb.Submit), encode(body), { msgID: MsgIds.command(CommandVerb.Submit, runId) });
      return runId;
    },
    async cancel(tenant, runId, reason) {
      const t = parseTenantId(tenant);
      const id = parseRunId(runId);
      await js.publish(Subjects.command(t, CommandVerb.Cancel), encode({ runId: id, ...(reason ? { reason } : {}) }));
    },
    async signal(tenant, runId, name, payload) {
      const t = parseTenantId(tenant);
      const id = parseRunId(runId);
      await js.publish(Subjects.command(t, CommandVerb.Signal), encode({ runId: id, name, ...(payload !== undefined ? { payload } : {}) }));
    },
    async events(tenant, runId) {
      return (await readRun(jsm, parseTenantId(tenant), parseRunId(runId))).events;
    },
    async waitForEnd(tenant, runId, timeoutMs = 60_000) {
      const t = parseTenantId(tenant);
      const id = parseRunId(runId);
      // An ordered consumer reads only committed events, from the start of the run.
      const consumer = await js.consumers.get(Streams.runs(t), { filter_subjects: [Subjects.run(t, id)], deliver_policy: DeliverPolicy.All });
      const messages = await consumer.consume();
      const timer = setTimeout(() => void messages.close(), timeoutMs);
      try {
        for await (const m of messages) {
          const ev = decodeEvent(m);
          if (TERMINAL.has(ev.type)) return ev;
        }
      } finally {
        clearTimeout(timer);
        await messages.close();
      }
      throw new UnavailableError(`run ${id} did not finish within ${timeoutMs} ms`);
    },
  };
}

export function isTerminalEvent(ev: RunEvent): boolean {
  return TERMINAL.has(ev.type);
}
