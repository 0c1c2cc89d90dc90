/**
 * Mode-0 step handlers: plain async functions registered by name. A handler gets its step's
 * context and returns the step's result: small metadata (counts, sizes, references), not
 * data; it is capped at a few KiB. Throwing fails the attempt; throw a `StepError` with
 * `retryable: false` to fail the run without further attempts.
 */
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { CapstanError, ConfigError, ErrorCode, type JsonValue, type RunId, type TenantId } from '@capstan/schemas';
import type { Logger } from '@capstan/kit';
import type { ExternalWrite } from './external-write.js';

export interface StepContext {
  readonly tenant: TenantId;
  readonly runId: RunId;
  readonly workflow: string;
  readonly step: string;
  readonly attempt: number;
  readonly input: { readonly [k: string]: JsonValue };
  /** Result of the previous step, if any. */
  readonly previous: JsonValue | undefined;
  /**
   * Every earlier step's result by name (engine 2; the latest for a step that ran more than
   * once, a fan-out's under its own name). Names too large to hand over are in `omitted`.
   */
  readonly results: { readonly [step: string]: JsonValue };
  readonly omitted?: readonly string[];
  /** A fan-out item: the list element this step runs for, and its place (1-based). */
  readonly item?: JsonValue;
  readonly index?: number;
  /** Inside a bounded loop: the iteration (1-based). */
  readonly iteration?: number;
  /** Aborted when the step's timeout passes, its run is cancelled (or no longer needs it), or the worker stops. */
  readonly signal: AbortSignal;
  readonly log: Logger;
  /**
   * Writes to a system outside Capstan, audit first: the intent is recorded with the
   * action's idempotency key before `perform(key)` runs, and if it cannot be recorded the
   * write does not happen (`audit_unavailable`, retryable). See {@link ExternalWrite}.
   */
  readonly externalWrite: ExternalWrite;
}

export type StepHandler = (ctx: StepContext) => Promise<JsonValue> | JsonValue;
export type Handlers = Readonly<Record<string, StepHandler>>;

/** A failure a handler reports on purpose, with its own code and retry behaviour. */
export class StepError extends CapstanError {
  constructor(message: string, opts: { retryable?: boolean; code?: string } = {}) {
    super((opts.code ?? ErrorCode.StepFailed) as ErrorCode, message, opts.retryable ?? true);
  }
}

export const demoHandlers: Handlers = {
  'demo.pipeline.extract': () => ({ ok: true, n: 1 }),
  'demo.pipeline.transform': () => ({ ok: true, n: 2 }),
  'demo.pipeline.load': () => ({ ok: true, n: 3 }),
  'demo.flaky.prepare': () => ({ ok: true }),
  // Fails its first two attempts, then succeeds: shows retries with durable backoff.
  'demo.flaky.call': ({ attempt }) => {
    if (attempt <= 2) throw new StepError(`upstream unavailable (attempt ${attempt})`, { code: 'upstream_unavailable' });
    return { ok: true, attempts: attempt };
  },
  'demo.signal.draft': () => ({ ok: true, draft: 'v1' }),
  'demo.approval.draft': () => ({ ok: true, draft: 'release notes v1' }),
  'demo.sandboxed.prepare': ({ input }) => ({ ok: true, chars: String(input['text'] ?? '').length }),
  'demo.signal.publish': ({ previous }) => ({ ok: true, approvedBy: (previous as { by?: string } | null)?.by ?? null }),
  'demo.agent.triage': ({ input }) => ({ urgent: input['urgent'] === true, items: ['billing', 'login', 'export'] }),
  'demo.agent.page': () => ({ paged: 'on-call' }),
  'demo.agent.queue': () => ({ queued: true }),
  'demo.agent.research': ({ item, index }) => ({ topic: item ?? null, index: index ?? 0, sources: 2 }),
  'demo.agent.draft': ({ iteration }) => ({ version: iteration ?? 1 }),
  'demo.agent.critique': ({ iteration }) => ({ ok: (iteration ?? 1) >= 2 }),
  'demo.agent.summarise': ({ results }) => ({
    topics: ((results['research'] as { topic: string }[] | undefined) ?? []).map((r) => r.topic),
    drafts: (results['draft'] as { version: number } | undefined)?.version ?? 0,
    feedback: results['feedback'] ?? null,
    brief: results['brief'] ?? null,
  }),
  'demo.brief.compose': ({ input }) => ({ brief: `${((input['research'] as unknown[] | undefined) ?? []).length} topic(s) researched` }),
};

/**
 * Handler names the module's `workflows` (if it exports them, as a module defining both does)
 * need and `handlers` lacks: a worker refuses to start with any, rather than fail runs later
 * with `unknown_handler`. Each definition lists the handlers it needs (`handlers`).
 */
function missingHandlers(mod: { workflows?: unknown }, handlers: Handlers): string[] {
  if (!Array.isArray(mod.workflows)) return [];
  const need = (mod.workflows as { handlers?: unknown }[]).flatMap((d) => (Array.isArray(d.handlers) ? (d.handlers as string[]) : []));
  return [...new Set(need)].filter((h) => !Object.hasOwn(handlers, h)).sort();
}

/** Why a worker without `CAPSTAN_HANDLERS` does not start. */
export const HANDLERS_REQUIRED = 'CAPSTAN_HANDLERS is required: the path of the module that exports your handlers (only `capstan dev` runs the demo handlers without it)';

/**
 * Loads `handlers` from a module path. An empty path is a start-up error, so a production
 * worker never runs the demo handlers by omission; only `capstan dev` (and tests) ask for
 * them (`demo`). `builtin` are the worker's own handlers (the data-sync pipeline steps): a
 * module's workflows may need them without defining them.
 * @throws ConfigError when the path is empty and `demo` is not set
 */
export async function loadHandlers(modulePath: string, opts: { readonly demo?: boolean; readonly builtin?: Handlers } = {}): Promise<Handlers> {
  const builtin = opts.builtin ?? {};
  if (!modulePath) {
    if (opts.demo) return demoHandlers;
    throw new ConfigError([HANDLERS_REQUIRED]);
  }
  let mod: { handlers?: unknown; default?: unknown };
  try {
    mod = (await import(pathToFileURL(resolve(modulePath)).href)) as typeof mod;
  } catch (e) {
    throw new CapstanError(ErrorCode.UnknownHandler, `cannot load the handlers module ${modulePath}: ${(e as Error).message.split('\n')[0] ?? ''}`);
  }
  const h = mod.handlers ?? mod.default;
  if (typeof h !== 'object' || h === null) throw new CapstanError(ErrorCode.UnknownHandler, `${modulePath} must export \`handlers\`: an object of functions`);
  const missing = missingHandlers(mod as { workflows?: unknown }, { ...builtin, ...(h as Handlers) });
  if (missing.length > 0) throw new CapstanError(ErrorCode.UnknownHandler, `${modulePath} exports workflows whose steps have no handler: ${missing.join(', ')}`);
  return h as Handlers;
}
