/**
 * The worker's built-in handlers for `datasync.pipeline` steps. A pipeline step needs the
 * tenant's credentials and data, which a worker never holds: the handler asks the tenant's
 * datasync service to run the step (identifiers only: run, step, attempt, connection,
 * model, destination) and waits for its metadata, then checks it once more against the
 * closed result schema before it goes to the control plane. A result that carries anything
 * but metadata fails the step (`schema_violation`, not retried).
 */
import {
  CapstanError,
  ErrorCode,
  parsePipelineInput,
  parseStepResult,
  pipelineHandler,
  PIPELINE_STEPS,
  type ErrorCode as Code,
  type JsonValue,
  type TenantId,
} from '@capstan/schemas';
import { runDatasyncStep, type NatsConnection } from '@capstan/kit';
import type { Handlers, StepContext } from './handlers.js';

export interface DatasyncHandlerOptions {
  /** The worker's connection to a tenant's account, once it has one. */
  readonly nc: (t: TenantId) => NatsConnection | undefined;
  /** Silence from the datasync service after which the attempt is reported lost. */
  readonly stallMs: number;
  /** The attempt's time budget, as the worker enforces it. */
  readonly timeoutMs?: (ctx: StepContext) => number;
}

export function datasyncHandlers(o: DatasyncHandlerOptions): Handlers {
  const out: Record<string, (ctx: StepContext) => Promise<JsonValue>> = {};
  for (const step of PIPELINE_STEPS) {
    out[pipelineHandler(step)] = async (ctx) => {
      let input;
      try {
        input = parsePipelineInput(ctx.input);
      } catch (e) {
        throw new CapstanError(ErrorCode.SchemaViolation, `datasync.pipeline input: ${(e as Error).message} (give connection, model and destination ids, nothing else)`, false);
      }
      const nc = o.nc(ctx.tenant);
      if (!nc) throw new CapstanError(ErrorCode.Unavailable, 'the worker is not connected', true);
      const outcome = await runDatasyncStep(
        nc,
        ctx.tenant,
        { runId: ctx.runId, step, attempt: ctx.attempt, ...input, timeoutMs: o.timeoutMs?.(ctx) ?? 60 * 60_000 },
        { signal: ctx.signal, stallMs: o.stallMs, onProgress: (p) => ctx.log.debug({ phase: p.phase, rows: p.rows, bytes: p.bytes }, 'pipeline step progress') },
      );
      if (outcome.error) throw new CapstanError(outcome.error.code as Code, outcome.error.message, outcome.error.retryable);
      try {
        return parseStepResult(outcome.result) as unknown as JsonValue;
      } catch (e) {
        throw new CapstanError(ErrorCode.SchemaViolation, `the datasync service returned more than metadata for step ${step}: ${(e as Error).message}`, false);
      }
    };
  }
  return out;
}
