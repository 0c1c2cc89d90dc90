/**
 * Deciding: one query → one Cedar request → allow, deny or needs-approval.
 *
 * - Nothing matches: deny (default deny). No policy at all (version 0): deny.
 * - Any forbid matches: deny, naming the forbids. A forbid whose evaluation errors counts as
 *   matching (fail closed), where Cedar alone would skip it.
 * - Permits match: allow if any of them carries no `@approval`; needs-approval (approvers of
 *   the first in text order) if all of them do.
 * - A malformed query (unknown action, a field that is not an id, a field the action does
 *   not take) is never evaluated: deny, with the problem in `errors`.
 *
 * Pure and in-process: the same set, version, tenant and query give the same decision.
 */
import * as cedar from './cedar.js';
import {
  ACTOR_PATTERN,
  boundDecision,
  combineDecisions,
  EGRESS_PATTERN,
  ENV_NAME_PATTERN,
  isPlainObject,
  POLICY_ACTIONS,
  POLICY_STEP_PATTERN,
  POLICY_WORKFLOW_PATTERN,
  PolicyAction,
  PolicyVerdict,
  WORKER_ID_PATTERN,
  formatDiagnostic,
  type PolicyDecision,
  type PolicyQuery,
  type TenantId,
} from '@capstan/schemas';
import { CEDAR_SCHEMA, EntityType, RESOURCE_OF } from './cedar-schema.js';
import type { CompiledPolicySet, CompileResult } from './compile.js';

/** An entity's uid: `Type::"id"`. */
export interface Uid {
  readonly type: string;
  readonly id: string;
}

/** An entity as Cedar reads it: uid, attributes, parents. */
export interface PolicyEntity {
  readonly uid: Uid;
  readonly attrs: Readonly<Record<string, cedar.CedarValueJson>>;
  readonly parents: readonly Uid[];
}
type EntityJson = PolicyEntity;

/** A Cedar request as the service builds it for one query of one tenant. */
export interface PolicyRequest {
  readonly principal: Uid;
  readonly action: Uid;
  readonly resource: Uid;
  readonly context: cedar.Context;
  readonly entities: readonly EntityJson[];
}

/** A query that cannot be evaluated: why, in words. */
export class QueryError extends Error {
  override readonly name = 'QueryError';
}

const TARGET_MAX = 200;

const FIELDS_OF: Readonly<Record<PolicyAction, readonly string[]>> = {
  [PolicyAction.RunStep]: ['mode'],
  [PolicyAction.LeaseSecret]: ['secret'],
  [PolicyAction.Egress]: ['host'],
  [PolicyAction.ExternalWrite]: ['target'],
  [PolicyAction.RequestCredential]: ['secret'],
};
const COMMON_FIELDS = ['action', 'workflow', 'step', 'worker'];
const ALL_FIELDS = new Set([...COMMON_FIELDS, 'mode', 'secret', 'host', 'target']);

const show = (v: unknown) => (typeof v === 'string' ? JSON.stringify(v.slice(0, 80)) : typeof v);

function text(q: Record<string, unknown>, field: string, pattern: RegExp, max: number, what: string): string {
  const v = q[field];
  if (typeof v !== 'string' || v.length === 0 || v.length > max || !pattern.test(v)) {
    throw new QueryError(`${field} ${v === undefined || v === null ? 'is missing' : `${show(v)} is not ${what}`}`);
  }
  return v;
}

/**
 * Checks a query as it came off the wire (any shape) and returns it typed.
 * @throws QueryError naming the first problem.
 */
export function checkQuery(raw: unknown): PolicyQuery {
  if (!isPlainObject(raw)) throw new QueryError('a query must be an object');
  const q = raw;
  const action = q['action'];
  if (typeof action !== 'string' || !(POLICY_ACTIONS as readonly string[]).includes(action)) {
    throw new QueryError(`unknown action ${show(action)}: the actions are ${POLICY_ACTIONS.join(', ')}`);
  }
  const a = action as PolicyAction;
  for (const k of Object.keys(q)) {
    if (q[k] === undefined || q[k] === null) continue;
    if (!ALL_FIELDS.has(k)) throw new QueryError(`${show(k)} is not a query field`);
    if (!COMMON_FIELDS.includes(k) && !FIELDS_OF[a].includes(k)) throw new QueryError(`${k} is not asked about for ${a}`);
  }
  const workflow = text(q, 'workflow', POLICY_WORKFLOW_PATTERN, 128, 'a workflow id');
  const step = text(q, 'step', POLICY_STEP_PATTERN, 64, 'a step name');
  const worker = q['worker'] === undefined || q['worker'] === null ? undefined : text(q, 'worker', WORKER_ID_PATTERN, 64, 'a worker id');
  const base = { action: a, workflow, step, ...(worker !== undefined ? { worker } : {}) };
  switch (a) {
    case PolicyAction.RunStep: {
      const mode = q['mode'];
      if (mode !== 0 && mode !== 1 && mode !== 2 && mode !== 3)
        throw new QueryError(`mode ${mode === undefined || mode === null ? 'is missing' : `${show(mode)} is not 0, 1, 2 or 3`}`);
      return { ...base, mode };
    }
    case PolicyAction.LeaseSecret:
    case PolicyAction.RequestCredential:
      return { ...base, secret: text(q, 'secret', ENV_NAME_PATTERN, 64, 'a key name (A-Z, 0-9, _)') };
    case PolicyAction.Egress: {
      const host = text(q, 'host', EGRESS_PATTERN, 262, 'host:port');
      const port = Number(host.slice(host.lastIndexOf(':') + 1));
      if (port < 1 || port > 65_535) throw new QueryError(`host ${show(host)} has no valid port (1-65535)`);
      return { ...base, host };
    }
    case PolicyAction.ExternalWrite:
      return { ...base, target: text(q, 'target', ACTOR_PATTERN, TARGET_MAX, 'a target name') };
  }
}

const entity = (uid: Uid, attrs: Record<string, cedar.CedarValueJson>, parents: readonly Uid[]): EntityJson => ({ uid, attrs, parents });
// Cedar only reads what it is given: the readonly shapes go as they are, uncopied.
const forCedar = (entities: readonly PolicyEntity[]): cedar.EntityJson[] => entities as unknown as cedar.EntityJson[];
const ref = (uid: Uid): cedar.CedarValueJson => ({ __entity: uid });

/** The uid of an entity of `tenant`: `<Type>::"<tenant>/<id>"`. */
export function uidOf(type: EntityType, tenant: TenantId, id: string): Uid {
  return { type, id: `${tenant}/${id}` };
}

/**
 * The Cedar request for a checked query of `tenant`: the principal, the resource and every
 * entity it mentions belong to `tenant`, whatever the query's strings say.
 */
export function buildRequest(tenant: TenantId, q: PolicyQuery): PolicyRequest {
  const tenantUid: Uid = { type: EntityType.Tenant, id: tenant };
  const tenantAttr = { tenant: ref(tenantUid) };
  const workflow = uidOf(EntityType.Workflow, tenant, q.workflow);
  const principal: Uid = { type: EntityType.Step, id: `${workflow.id}/${q.step}` };
  const entities: EntityJson[] = [
    entity(tenantUid, {}, []),
    entity(workflow, { ...tenantAttr, name: q.workflow }, [tenantUid]),
    entity(principal, { ...tenantAttr, workflow: ref(workflow), name: q.step }, [workflow]),
  ];
  let resource: Uid;
  let attrs: Record<string, cedar.CedarValueJson>;
  switch (q.action) {
    case PolicyAction.RunStep:
      resource = uidOf(EntityType.Mode, tenant, String(q.mode));
      attrs = { level: q.mode ?? -1 };
      break;
    case PolicyAction.LeaseSecret:
    case PolicyAction.RequestCredential:
      resource = uidOf(RESOURCE_OF[q.action], tenant, q.secret ?? '');
      attrs = { key: q.secret ?? '' };
      break;
    case PolicyAction.Egress: {
      const host = q.host ?? '';
      const colon = host.lastIndexOf(':');
      resource = uidOf(EntityType.Host, tenant, host);
      attrs = { hostname: host.slice(0, colon), port: Number(host.slice(colon + 1)) };
      break;
    }
    case PolicyAction.ExternalWrite:
      resource = uidOf(EntityType.Target, tenant, q.target ?? '');
      attrs = { name: q.target ?? '' };
      break;
  }
  entities.push(entity(resource, { ...tenantAttr, ...attrs }, [tenantUid]));
  const context: cedar.Context = {};
  if (q.worker !== undefined) {
    const worker = uidOf(EntityType.Worker, tenant, q.worker);
    entities.push(entity(worker, { ...tenantAttr, name: q.worker }, [tenantUid]));
    context['worker'] = ref(worker);
  }
  return { principal, action: { type: 'Action', id: q.action }, resource, context, entities };
}

/**
 * Cedar's own check of a built request and its entities against Capstan's schema: the
 * problems, none when it fits. For tests and tools (the service builds requests that fit).
 */
export function requestProblems(request: PolicyRequest): string[] {
  const r = cedar.isAuthorized({
    principal: request.principal,
    action: request.action,
    resource: request.resource,
    context: request.context,
    entities: forCedar(request.entities),
    schema: CEDAR_SCHEMA,
    validateRequest: true,
    policies: { staticPolicies: {} },
  });
  return r.type === 'failure' ? r.errors.map((e) => e.message) : [];
}

// ---------------------------------------------------------------------------------------
// Cedar keeps parsed policy sets in the wasm instance by name; a bounded number of slots,
// reused least recently used first, keeps its memory flat however many versions are asked.

const MAX_SLOTS = 256;
const slots = new Map<string, CompiledPolicySet>();
const slotOf = new WeakMap<CompiledPolicySet, string>();
let nextSlot = 0;

function preparsed(set: CompiledPolicySet): string {
  const known = slotOf.get(set);
  if (known !== undefined && slots.get(known) === set) {
    slots.delete(known);
    slots.set(known, set);
    return known;
  }
  let slot: string;
  if (slots.size < MAX_SLOTS) {
    slot = `set-${nextSlot++}`;
  } else {
    slot = slots.keys().next().value as string;
    slots.delete(slot);
  }
  const r = cedar.preparsePolicySet(slot, { staticPolicies: { ...set.cedarPolicies } });
  if (r.type === 'failure') throw new Error(`cedar refused a compiled policy set: ${r.errors.map((e) => e.message).join('; ')}`);
  slots.set(slot, set);
  slotOf.set(set, slot);
  return slot;
}

const deny = (version: number, errors: readonly string[] = [], policies: readonly string[] = []): PolicyDecision =>
  boundDecision({ decision: PolicyVerdict.Deny, version, policies, ...(errors.length > 0 ? { errors } : {}) });

/**
 * Decides one request under a compiled set (the fences included). Exposed for tests and
 * tools that build requests themselves; the service goes through {@link evaluate}.
 */
export function authorize(set: CompiledPolicySet, version: number, request: PolicyRequest): PolicyDecision {
  let answer: cedar.AuthorizationAnswer;
  try {
    answer = cedar.statefulIsAuthorized({
      principal: request.principal,
      action: request.action,
      resource: request.resource,
      context: request.context,
      entities: forCedar(request.entities),
      preparsedPolicySetId: preparsed(set),
    });
  } catch (e) {
    return deny(version, [`cedar failed: ${(e as Error).message}`]);
  }
  if (answer.type === 'failure') {
    const refused: string[] = [];
    for (const e of answer.errors) refused.push(`cedar refused the request: ${e.message}`);
    return deny(version, refused);
  }
  const { decision, diagnostics } = answer.response;
  const reasons: string[] = [];
  for (const id of diagnostics.reason) {
    // Text order (a handful of ids: insertion sort).
    const at = set.byId.get(id)?.index ?? -1;
    let i = reasons.length;
    while (i > 0 && (set.byId.get(reasons[i - 1] ?? '')?.index ?? -1) > at) i--;
    reasons.splice(i, 0, id);
  }
  const errors: string[] = [];
  const erroredForbids: string[] = [];
  for (const e of diagnostics.errors) {
    errors.push(`policy ${e.policyId}: ${e.error.message}`);
    // Cedar skips a policy whose evaluation errors; a forbid that could not be evaluated still denies.
    if ((set.byId.get(e.policyId)?.effect ?? 'forbid') === 'forbid') erroredForbids.push(e.policyId);
  }
  if (decision === 'deny' || erroredForbids.length > 0) return deny(version, errors, decision === 'deny' ? [...reasons, ...erroredForbids] : erroredForbids);
  let plain = false;
  let approvers: string | undefined;
  let selfApproval: boolean | undefined;
  for (const id of reasons) {
    const p = set.byId.get(id);
    const a = p?.approval;
    if (a === undefined) plain = true;
    else if (approvers === undefined) {
      approvers = a;
      selfApproval = p?.selfApproval;
    }
  }
  if (plain) return boundDecision({ decision: PolicyVerdict.Allow, version, policies: reasons, ...(errors.length > 0 ? { errors } : {}) });
  return boundDecision({
    decision: PolicyVerdict.NeedsApproval,
    version,
    policies: reasons,
    ...(approvers !== undefined ? { approvers } : {}),
    ...(selfApproval === true ? { selfApproval: true } : {}),
    ...(errors.length > 0 ? { errors } : {}),
  });
}

/** What {@link evaluate} decides with: a compiled set, a compile result, or none (version 0). */
export type PolicySetInput = CompiledPolicySet | CompileResult | undefined;

function isCompileResult(x: PolicySetInput): x is CompileResult {
  return x !== undefined && 'ok' in x;
}

/**
 * Decides one query of `tenant` under `policySet`, recorded as `version` (0 for a text that
 * is not a stored version, such as a candidate under test). No set is the default deny,
 * version 0; a set that did not compile denies everything, with its diagnostics.
 * Never throws.
 * @example
 * const c = compilePolicySet('permit(principal, action == Action::"run-step", resource) when { resource.level <= 1 };');
 * evaluate(c, 3, tenant, { action: 'run-step', workflow: 'etl', step: 'load', mode: 1 }); // allow, version 3
 */
export function evaluate(policySet: PolicySetInput, version: number, tenant: TenantId, query: PolicyQuery | Record<string, unknown>): PolicyDecision {
  if (policySet === undefined) version = 0;
  let q: PolicyQuery;
  try {
    q = checkQuery(query);
  } catch (e) {
    return deny(version, [`invalid query: ${(e as Error).message}`]);
  }
  if (policySet === undefined) return deny(0);
  if (isCompileResult(policySet)) {
    if (!policySet.ok) {
      const errs = policySet.diagnostics.filter((d) => d.severity === 'error');
      return deny(version, [`policy version ${version} does not compile: everything is denied`, ...errs.map((d) => formatDiagnostic(d))]);
    }
    return remembered(policySet.policySet, version, tenant, q);
  }
  return remembered(policySet, version, tenant, q);
}

// A decision depends on nothing but the set, the tenant and the query, and steps ask the same
// questions run after run: each compiled set remembers its latest answers (bounded).
const REMEMBERED = 2048;
const answers = new WeakMap<CompiledPolicySet, Map<string, PolicyDecision>>();

function remembered(set: CompiledPolicySet, version: number, tenant: TenantId, q: PolicyQuery): PolicyDecision {
  const key = `${tenant}\u0000${q.action}\u0000${q.workflow}\u0000${q.step}\u0000${q.mode ?? q.secret ?? q.host ?? q.target ?? ''}\u0000${q.worker ?? ''}`;
  let known = answers.get(set);
  const hit = known?.get(key);
  if (hit) return hit.version === version ? hit : { ...hit, version };
  const d = authorize(set, version, buildRequest(tenant, q));
  // An answer with errors is not kept: it is rare, and it is told afresh each time.
  if (d.errors) return d;
  if (!known) answers.set(set, (known = new Map<string, PolicyDecision>()));
  if (known.size >= REMEMBERED) known.delete(known.keys().next().value as string);
  known.set(key, Object.freeze({ ...d, policies: Object.freeze([...d.policies]) }));
  return d;
}

/**
 * Decides all of one step's queries under one version and combines them: deny if any
 * denies; else needs-approval if any needs it (approvers of the first); else allow.
 * `policies` is the union; each query's errors are prefixed with its index and action.
 */
export function decideAll(policySet: PolicySetInput, version: number, tenant: TenantId, queries: readonly (PolicyQuery | Record<string, unknown>)[]): PolicyDecision {
  const decisions: PolicyDecision[] = [];
  for (let i = 0; i < queries.length; i++) {
    const q = queries[i] as PolicyQuery | Record<string, unknown>;
    const d = evaluate(policySet, version, tenant, q);
    if (!d.errors) {
      decisions.push(d);
      continue;
    }
    const action = isPlainObject(q) && typeof q['action'] === 'string' ? ` (${q['action'].slice(0, 40)})` : '';
    const errors: string[] = [];
    for (const e of d.errors) errors.push(`query ${i}${action}: ${e}`);
    decisions.push({ ...d, errors });
  }
  return combineDecisions(policySet === undefined ? 0 : version, decisions);
}
