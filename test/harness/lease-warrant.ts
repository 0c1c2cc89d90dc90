/**
 * The record a pipeline run would leave, written directly for tests and benchmarks of the
 * lease ledger: the secrets-lease service issues the datasync service a lease only for what
 * a live pipeline run's record warrants (docs/secrets.md, "Warrant"). For each scope asked,
 * the run's `run.started` (the built-in pipeline workflow), a `step.scheduled` of that step
 * and attempt with the Retrieve handler, and a catalog record of the run's connection naming
 * the keys asked for, published with the tenant's own connection (the admin's) before the ask.
 */
import { createHash } from 'node:crypto';
import type { JetStreamClient } from '@nats-io/jetstream';
import { CatalogKind, encode, EVENT_ENVELOPE_VERSION, PIPELINE_WORKFLOW, pipelineHandler, PipelineStep, Subjects, type RunId, type TenantId } from '@capstan/schemas';

export interface LeaseScopeAsk {
  readonly runId: string;
  readonly step: string;
  readonly attempt: number;
  readonly keys: readonly string[];
}

export interface PipelineWarrants {
  /** Writes what warrants `req` (once per run, step and attempt, and key), one ask at a time. */
  warrant(req: LeaseScopeAsk): Promise<void>;
  /** Ends a warranted run as the orchestrator would record it (`run.completed`). */
  end(runId: string): Promise<void>;
}

export function pipelineWarrants(js: JetStreamClient, t: TenantId, by = 'test'): PipelineWarrants {
  const runs = new Map<string, { seq: number; scheduled: Set<string>; keys: Set<string>; version: number }>();
  let writing: Promise<void> = Promise.resolve();

  async function event(runId: string, w: { seq: number }, type: string, data: object): Promise<void> {
    w.seq++;
    await js.publish(Subjects.run(t, runId as RunId), encode({ v: EVENT_ENVELOPE_VERSION, type, runId, seq: w.seq, at: Date.now(), causationId: `test:${w.seq}`, data }));
  }

  async function write(req: LeaseScopeAsk): Promise<void> {
    const id = `lt-${createHash('sha256').update(req.runId).digest('hex').slice(0, 16)}`;
    let w = runs.get(req.runId);
    if (!w) {
      w = { seq: 0, scheduled: new Set(), keys: new Set(), version: 0 };
      runs.set(req.runId, w);
      await event(req.runId, w, 'run.started', { workflow: PIPELINE_WORKFLOW, version: 1, input: { connection: id, model: 'm', destination: 'd' } });
    }
    if (!w.scheduled.has(`${req.step}:${req.attempt}`)) {
      w.scheduled.add(`${req.step}:${req.attempt}`);
      await event(req.runId, w, 'step.scheduled', {
        step: req.step,
        attempt: req.attempt,
        handler: pipelineHandler(PipelineStep.Retrieve),
        mode: 0,
        pool: 'default',
        timeoutMs: 60_000,
      });
    }
    if (req.keys.some((k) => !(w as { keys: Set<string> }).keys.has(k))) {
      for (const k of req.keys) w.keys.add(k);
      w.version++;
      const record = {
        kind: CatalogKind.Connection,
        id,
        version: w.version,
        name: id,
        status: 'active',
        fingerprint: 'f'.repeat(64),
        summary: { type: 'postgres', auth: 'username_password', tls: 'disable', keys: [...w.keys] },
        by,
        at: new Date().toISOString(),
      };
      await js.publish(Subjects.catalog(t, CatalogKind.Connection, id), encode(record));
    }
  }

  return {
    warrant(req) {
      // One at a time: a concurrent ask finds its run's record whole.
      const written = writing.then(() => write(req));
      writing = written.catch(() => undefined);
      return written;
    },
    async end(runId) {
      const w = runs.get(runId);
      if (!w) throw new Error(`run ${runId} has no warrant written`);
      await event(runId, w, 'run.completed', { output: {} });
    },
  };
}
