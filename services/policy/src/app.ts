/**
 * Composition root of the policy service: answers `cap.<t>.svc.policy.<verb>` (core NATS
 * request/reply, one queue group, so instances share the load) for every tenant, or for the
 * configured ones.
 *
 * - `decide { queries, version? }` → the combined {@link PolicyDecision} under the version in
 *   force (or `version`, for replay). A tenant without a policy, or without a policy stream,
 *   gets deny, version 0.
 * - `set { text, by, reason? }` → a new version, after Cedar validated the text; refused with
 *   Cedar's diagnostics otherwise. The version is in force from the reply on.
 * - `get { version? }`, `history { limit? }`, `test { queries, version?, text? }`.
 *
 * The tenant is the subject's, never the payload's. Every refusal is `{ error: { code,
 * message, diagnostics? } }`; nothing is half-applied: a set either stored its version or
 * stored nothing.
 */
import type { Msg, Subscription } from '@nats-io/transport-node';
import {
  boundDecision,
  CapstanError,
  combineDecisions,
  decode,
  encode,
  ErrorCode,
  InvalidArgumentError,
  isPolicyVerb,
  parsePolicyRequest,
  policyRefusalDetails,
  PolicyInvalidError,
  PolicyVerb,
  PolicyVersionNotFoundError,
  Subjects,
  Role,
  type PolicyDecision,
  type PolicyReply,
  type PolicyRequest,
  type PolicyVersionSummary,
  type TenantId,
} from '@capstan/schemas';
import {
  answerProofSubject,
  inSpan,
  metrics,
  proofHeaders,
  refusalProofSubject,
  refuseRequest,
  serviceAccess,
  SpanKind,
  traceParentOf,
  type Logger,
  type TenantAccess,
  type TenantConnection,
  type TenantFollower,
} from '@capstan/kit';
import type { Config } from './config.js';
import { compilePolicySet, type CompileResult } from './compile.js';
import { decideAll, evaluate } from './evaluate.js';
import { NoPolicyStreamError, openTenantVersions, type StoredVersion, type TenantVersions } from './store.js';

export interface PolicyService {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Requests answered so far, by verb (for status output and tests). */
  stats(): Readonly<Record<string, number>>;
}

const QUEUE = 'policy';
const VERBS = Object.values(PolicyVerb);

export function createPolicyService(config: Config, log: Logger): Promise<PolicyService> {
  let access: TenantAccess | undefined;
  let follower: TenantFollower | undefined;
  /** Each tenant is its own account: one connection each. */
  const conns = new Map<TenantId, TenantConnection>();
  const subs: Subscription[] = [];
  const inflight = new Set<Promise<void>>();
  const tenants = new Map<TenantId, Promise<TenantVersions>>();
  const compiled = new Map<string, CompileResult>();
  const counts: Record<string, number> = {};

  /** The tenant's versions, opened on first use; undefined when it has no policy stream. */
  async function versionsOf(t: TenantId): Promise<TenantVersions | undefined> {
    let p = tenants.get(t);
    if (!p) {
      const tc = conns.get(t);
      if (!tc) throw new CapstanError(ErrorCode.Unavailable, `the policy service does not serve tenant ${t} (yet)`, true);
      p = openTenantVersions(tc, t, log);
      tenants.set(t, p);
      // A failed open is not remembered: the stream may appear (the tenant provisioned) later.
      p.catch(() => tenants.delete(t));
    }
    try {
      return await p;
    } catch (e) {
      if (e instanceof NoPolicyStreamError) return undefined;
      throw e;
    }
  }

  /** Compiled sets by text digest: immutable, so shared by every version and tenant with that text. */
  function compiledOf(v: StoredVersion): CompileResult {
    if (!v.record) return { ok: false, diagnostics: [{ severity: 'error', message: `version ${v.version} is not a valid policy record: ${v.problem ?? 'unknown problem'}` }] };
    const key = v.record.sha256;
    let c = compiled.get(key);
    if (c) {
      compiled.delete(key);
    } else {
      c = compilePolicySet(v.record.text);
      if (!c.ok) log.error({ version: v.version, sha256: key }, 'a stored policy version does not compile: decisions under it deny');
    }
    compiled.set(key, c);
    if (compiled.size > config.cacheSize) compiled.delete(compiled.keys().next().value as string);
    return c;
  }

  /** The stored version `asked` (or the one in force), after catching up with other instances if needed. */
  async function storedAt(state: TenantVersions, asked: number | undefined): Promise<StoredVersion | undefined> {
    if (asked !== undefined && asked > state.latest()) await state.refresh();
    const version = asked ?? state.latest();
    if (version > state.latest()) throw new PolicyVersionNotFoundError(version, state.latest());
    return version === 0 ? undefined : state.get(version);
  }

  const noStream = (t: TenantId) => `tenant ${t} has no policy stream: default deny`;

  async function decide(t: TenantId, req: PolicyRequest<'decide'>): Promise<PolicyDecision> {
    const state = await versionsOf(t);
    if (!state) {
      if (req.version !== undefined && req.version > 0) throw new PolicyVersionNotFoundError(req.version, 0);
      const d = decideAll(undefined, 0, t, req.queries);
      return boundDecision({ ...d, errors: [noStream(t), ...(d.errors ?? [])] });
    }
    const stored = await storedAt(state, req.version);
    return stored ? decideAll(compiledOf(stored), stored.version, t, req.queries) : decideAll(undefined, 0, t, req.queries);
  }

  async function set(t: TenantId, req: PolicyRequest<'set'>): Promise<PolicyReply<'set'>> {
    const c = compilePolicySet(req.text);
    if (!c.ok) throw new PolicyInvalidError(c.diagnostics);
    const state = await versionsOf(t);
    if (!state) throw new NoPolicyStreamError(t);
    const r = await state.append({ text: req.text, by: req.by, ...(req.reason !== undefined ? { reason: req.reason } : {}), at: new Date() });
    compiled.set(r.sha256, c);
    if (!r.unchanged) log.info({ tenant: t, version: r.version, by: req.by, sha256: r.sha256, bytes: Buffer.byteLength(req.text) }, 'policy version stored');
    return { ...r, warnings: c.diagnostics.slice(0, 200) };
  }

  async function get(t: TenantId, req: PolicyRequest<'get'>): Promise<PolicyReply<'get'>> {
    const state = await versionsOf(t);
    if (!state) throw new NoPolicyStreamError(t);
    const stored = await storedAt(state, req.version);
    if (!stored) return { version: 0 };
    return { version: stored.version, valid: stored.record !== undefined, ...(stored.record ? { record: stored.record } : {}) };
  }

  async function history(t: TenantId, req: PolicyRequest<'history'>): Promise<PolicyReply<'history'>> {
    const state = await versionsOf(t);
    if (!state) throw new NoPolicyStreamError(t);
    const all = state.all();
    const versions = all.slice(-(req.limit ?? 1000)).map((v): PolicyVersionSummary => {
      const r = v.record;
      if (!r) return { version: v.version, sha256: '', by: '', at: v.storedAt.toISOString(), bytes: v.bytes, valid: false };
      return { version: v.version, sha256: r.sha256, by: r.by, ...(r.reason !== undefined ? { reason: r.reason } : {}), at: r.at, bytes: Buffer.byteLength(r.text), valid: true };
    });
    return { latest: all.length, versions };
  }

  async function test(t: TenantId, req: PolicyRequest<'test'>): Promise<PolicyReply<'test'>> {
    if (req.text !== undefined) {
      if (req.version !== undefined) throw new InvalidArgumentError('test under a candidate text or a version, not both');
      const c = compilePolicySet(req.text);
      if (!c.ok) throw new PolicyInvalidError(c.diagnostics);
      const decisions = req.queries.map((q) => evaluate(c, 0, t, q));
      return { version: 0, candidate: true, decisions, combined: combineDecisions(0, decisions) };
    }
    const state = await versionsOf(t);
    const stored = state ? await storedAt(state, req.version) : undefined;
    if (!state && req.version !== undefined && req.version > 0) throw new PolicyVersionNotFoundError(req.version, 0);
    const set = stored ? compiledOf(stored) : undefined;
    const version = stored?.version ?? 0;
    const decisions = req.queries.map((q) => evaluate(set, version, t, q));
    const combined = combineDecisions(version, decisions);
    return { version, candidate: false, decisions, combined: state ? combined : boundDecision({ ...combined, errors: [noStream(t), ...(combined.errors ?? [])] }) };
  }

  async function answer(t: TenantId, verb: PolicyVerb, body: Record<string, unknown>): Promise<unknown> {
    switch (verb) {
      case PolicyVerb.Decide:
        return decide(t, parsePolicyRequest(verb, body));
      case PolicyVerb.Set:
        return set(t, parsePolicyRequest(verb, body));
      case PolicyVerb.Get:
        return get(t, parsePolicyRequest(verb, body));
      case PolicyVerb.History:
        return history(t, parsePolicyRequest(verb, body));
      case PolicyVerb.Test:
        return test(t, parsePolicyRequest(verb, body));
    }
  }

  async function serve(t: TenantId, msg: Msg): Promise<void> {
    const reply = msg.reply;
    if (!reply) return;
    let out: unknown;
    const verb = msg.subject.slice(msg.subject.lastIndexOf('.') + 1);
    try {
      if (!isPolicyVerb(verb)) throw new InvalidArgumentError(`unknown policy verb ${JSON.stringify(verb.slice(0, 32))}: one of ${VERBS.join(', ')}`);
      // A decision asked within a run's trace is a hop of it (the request's traceparent).
      const parent = traceParentOf(msg.headers);
      out = parent
        ? await inSpan('policy', `policy.${verb}`, { kind: SpanKind.SERVER, parent, attributes: { 'capstan.tenant': t, 'capstan.hop': 'policy' } }, async (span) => {
            const r = await answer(t, verb, decode(msg.data));
            if (verb === PolicyVerb.Decide)
              span?.setAttributes({ 'capstan.policy.decision': (r as PolicyDecision).decision, 'capstan.policy.version': (r as PolicyDecision).version });
            return r;
          })
        : await answer(t, verb, decode(msg.data));
      if (verb === PolicyVerb.Decide) metrics.policyDecisions.inc({ tenant: t, verdict: (out as PolicyDecision).decision });
      counts[verb] = (counts[verb] ?? 0) + 1;
    } catch (e) {
      // kit's one refusal convention: code and message in headers, Cedar's diagnostics in the
      // body, signed like an answer (and over the code) so no one else can refuse in our name.
      const typed = CapstanError.is(e);
      if (!typed) log.error({ err: e, verb }, 'policy request failed unexpectedly');
      const code = typed ? e.code : ErrorCode.Unavailable;
      const details = typed ? policyRefusalDetails(e) : undefined;
      const signer = conns.get(t)?.signer;
      refuseRequest(msg, code, typed ? e.message : 'the policy service failed to answer; try again', {
        ...(details ? { details } : {}),
        ...(signer ? { signer, proofSubject: refusalProofSubject(answerProofSubject(msg.subject, msg.data), code) } : {}),
      });
      return;
    }
    const data = encode(out);
    // Signed as this service's user in the tenant, over the question and the answer: the
    // orchestrator records only an answer it can prove came from here.
    const signer = conns.get(t)?.signer;
    msg.respond(data, signer ? { headers: proofHeaders(signer, answerProofSubject(msg.subject, msg.data), data) } : undefined);
  }

  return Promise.resolve({
    stats: () => ({ ...counts }),
    async start() {
      access = await serviceAccess(Role.Policy, config, config.name, log);
      follower = await access.follow(
        config.tenants,
        config.discoveryMs,
        async (tc) => {
          conns.set(tc.tenant, tc);
          subs.push(
            tc.nc.subscribe(Subjects.svcVerbs(tc.tenant, 'policy'), {
              queue: QUEUE,
              callback: (err, msg) => {
                if (err) return;
                const p = serve(tc.tenant, msg).catch((e: unknown) => log.error({ err: e }, 'policy reply failed'));
                inflight.add(p);
                void p.finally(() => inflight.delete(p));
              },
            }),
          );
          // Answering from the moment the tenant is served: the server knows the subscription.
          await tc.nc.flush();
        },
        log,
      );
      log.info({ tenants: config.tenants }, 'policy service started');
    },
    async stop() {
      follower?.stop();
      for (const s of subs) s.unsubscribe();
      await Promise.allSettled([...inflight]);
      const opened = await Promise.allSettled([...tenants.values()]);
      await Promise.allSettled(opened.flatMap((o) => (o.status === 'fulfilled' ? [o.value.stop()] : [])));
      tenants.clear();
      await access?.close();
    },
  });
}
