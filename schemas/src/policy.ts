/**
 * The policy contract: what the control plane asks the tenant's policy (`cap.<t>.svc.policy.*`,
 * answered by `services/policy` on Cedar), what it answers, and the versions it keeps.
 *
 * Every question is scoped to one tenant, and the tenant comes from the subject, never from
 * the payload. A decision is `allow`, `deny` or `needs-approval` (with the approver group),
 * made by the policy version in force when asked, and names that version so a replay can
 * re-check it. No policy set means version 0: default deny.
 */
import { CapstanError, ErrorCode, SchemaError } from './errors.js';
import { ACTOR_PATTERN, actorSchema, PolicyVerdict, reasonSchema } from './events.js';
import { PolicyVerb, TOKEN_PATTERN } from './names.js';
import type { Infer, Schema } from './validate.js';
import { arr, bool, int, isPlainObject, json, literal, obj, optional, str } from './validate.js';

/** The actions a policy decides. Each query asks about one. */
export const PolicyAction = {
  RunStep: 'run-step',
  LeaseSecret: 'lease-secret',
  Egress: 'egress',
  ExternalWrite: 'external-write',
  RequestCredential: 'request-credential',
} as const;
export type PolicyAction = (typeof PolicyAction)[keyof typeof PolicyAction];
export const POLICY_ACTIONS: readonly PolicyAction[] = Object.values(PolicyAction);

/** What is asked. Everything is scoped to one tenant; ids are plain strings. */
export interface PolicyQuery {
  readonly action: PolicyAction;
  /** Principal: the step `Step::"<tenant>/<workflow>/<step>"`. */
  readonly workflow: string;
  readonly step: string;
  /** run-step: the mode asked for. */
  readonly mode?: 0 | 1 | 2 | 3;
  /** lease-secret / request-credential: the key name. */
  readonly secret?: string;
  /** egress: `host:port`. */
  readonly host?: string;
  /** external-write: a target name. */
  readonly target?: string;
  /** Who asks, when a worker does (request-credential). */
  readonly worker?: string;
}

/** A policy's answer. */
export interface PolicyDecision {
  readonly decision: PolicyVerdict;
  /** The policy version that decided (0: none set, default deny). */
  readonly version: number;
  /** Ids of the determining policies (Cedar's reasons). */
  readonly policies: readonly string[];
  /** needs-approval: the approver group. */
  readonly approvers?: string;
  /** needs-approval: the run's requester may approve it (`@self_approval("allowed")`). */
  readonly selfApproval?: boolean;
  /** Evaluation errors, in words. */
  readonly errors?: readonly string[];
}

/** Bounds a decision keeps, so it can be recorded on a run as it is. */
export const POLICY_DECISION_LIMITS = { policies: 64, policyId: 256, errors: 16, errorChars: 1000, approvers: 128 } as const;
/** Queries one request may carry (a step asks about its mode, each secret, each host). */
export const MAX_POLICY_QUERIES = 64;
/** Largest policy text a tenant may set, in UTF-8 bytes. */
export const MAX_POLICY_TEXT_BYTES = 64 * 1024;

/** Workflow ids, as `defineWorkflow` accepts them. */
export const POLICY_WORKFLOW_PATTERN = /^[a-z0-9][a-z0-9._-]{0,127}$/;
/** Step names, as run events carry them. */
export const POLICY_STEP_PATTERN = TOKEN_PATTERN;

const decisionSchema: Schema<PolicyDecision> = obj('policy decision', {
  decision: literal(PolicyVerdict.Allow, PolicyVerdict.Deny, PolicyVerdict.NeedsApproval),
  version: int({ min: 0 }),
  policies: arr(str({ min: 1, max: POLICY_DECISION_LIMITS.policyId }), { max: POLICY_DECISION_LIMITS.policies }),
  approvers: optional(str({ min: 1, max: POLICY_DECISION_LIMITS.approvers })),
  selfApproval: optional(bool()),
  errors: optional(arr(str({ max: POLICY_DECISION_LIMITS.errorChars }), { max: POLICY_DECISION_LIMITS.errors })),
});

/** @throws SchemaError */
export function parsePolicyDecision(value: unknown): PolicyDecision {
  return decisionSchema.parse(value);
}

/**
 * Combines the decisions of one step's queries, all made under one version: deny if any
 * denies; else needs-approval if any needs it (the approvers of the first that does); else
 * allow. `policies` and `errors` are the unions, in order, within the recorded bounds. No
 * decisions at all is a deny: nothing was allowed.
 */
export function combineDecisions(version: number, decisions: readonly PolicyDecision[]): PolicyDecision {
  const policies = new Set<string>();
  const errors: string[] = [];
  let denied = decisions.length === 0;
  let approval: PolicyDecision | undefined;
  // The requester may approve only if every query that needs a person lets them.
  let selfApproval = true;
  for (const d of decisions) {
    if (d.decision === PolicyVerdict.NeedsApproval && d.selfApproval !== true) selfApproval = false;
    for (const p of d.policies) policies.add(p);
    if (d.errors) for (const e of d.errors) errors.push(e);
    if (d.decision === PolicyVerdict.Deny) denied = true;
    else if (d.decision === PolicyVerdict.NeedsApproval) approval ??= d;
  }
  if (decisions.length === 0) errors.push('no queries were asked: nothing is allowed');
  const verdict = denied ? PolicyVerdict.Deny : approval ? PolicyVerdict.NeedsApproval : PolicyVerdict.Allow;
  return boundDecision({
    decision: verdict,
    version,
    policies: [...policies],
    ...(!denied && approval?.approvers !== undefined ? { approvers: approval.approvers } : {}),
    ...(!denied && approval && selfApproval ? { selfApproval: true as const } : {}),
    ...(errors.length > 0 ? { errors } : {}),
  });
}

/** Cuts a decision to {@link POLICY_DECISION_LIMITS} (the run records it as it is). */
export function boundDecision(d: PolicyDecision): PolicyDecision {
  const L = POLICY_DECISION_LIMITS;
  const policies: string[] = [];
  for (const p of d.policies) {
    if (policies.length === L.policies) break;
    policies.push(p.length > L.policyId ? p.slice(0, L.policyId) : p);
  }
  const errors: string[] = [];
  if (d.errors) {
    for (const e of d.errors) {
      if (errors.length === L.errors) break;
      errors.push(e.length > L.errorChars ? `${e.slice(0, L.errorChars - 1)}…` : e);
    }
  }
  return {
    decision: d.decision,
    version: d.version,
    policies,
    ...(d.approvers !== undefined ? { approvers: d.approvers.slice(0, L.approvers) } : {}),
    ...(d.selfApproval === true && d.decision === PolicyVerdict.NeedsApproval ? { selfApproval: true as const } : {}),
    ...(errors.length > 0 ? { errors } : {}),
  };
}

// ---------------------------------------------------------------------------------------
// Versions: one immutable record per change, the Nth message of the tenant's policy stream.

/** One version of a tenant's policy, as stored on `cap.<t>.policy.versions`. */
const versionRecordSchema = obj('policy version', {
  version: int({ min: 1 }),
  text: str({ max: MAX_POLICY_TEXT_BYTES }),
  by: actorSchema,
  reason: optional(reasonSchema),
  /** When the policy service stored it (ISO 8601). */
  at: str({ min: 1, max: 40 }),
  /** Hex SHA-256 of `text` (UTF-8). */
  sha256: str({ min: 64, max: 64, pattern: /^[0-9a-f]{64}$/ }),
});
export type PolicyVersionRecord = Infer<typeof versionRecordSchema>;

/** @throws SchemaError */
export function parsePolicyVersionRecord(value: unknown): PolicyVersionRecord {
  return versionRecordSchema.parse(value);
}

/** A version as history lists it: who, when, why, and its digest, without the text. */
export interface PolicyVersionSummary {
  readonly version: number;
  readonly sha256: string;
  readonly by: string;
  readonly reason?: string;
  readonly at: string;
  readonly bytes: number;
  /** False for a stored record that does not decode or compile: decisions under it deny. */
  readonly valid: boolean;
}

// ---------------------------------------------------------------------------------------
// Requests and replies on `cap.<t>.svc.policy.<verb>` (core NATS request/reply).

/**
 * Queries travel as plain objects and are checked one by one when decided, so one
 * malformed or unknown query is a deny with a diagnostic rather than a refused request.
 */
const queryObjects = {
  name: 'policy queries',
  parse(v: unknown, path = ''): Record<string, unknown>[] {
    const list = arr(json(), { max: MAX_POLICY_QUERIES }).parse(v, path);
    if (list.length === 0) throw new SchemaError('policy queries', path, 'must hold at least one query');
    list.forEach((q, i) => {
      if (!isPlainObject(q)) throw new SchemaError('policy queries', `${path}[${i}]`, 'must be an object');
    });
    return list as Record<string, unknown>[];
  },
} satisfies Schema<Record<string, unknown>[]>;

const requestSchemas = {
  /** Decide with the version in force, or with `version` (a past one, for replay). */
  decide: obj('policy decide request', {
    queries: queryObjects,
    version: optional(int({ min: 0 })),
    /**
     * What the question is about (a run's attempt and credential: `<run>/<step>/<attempt>/<name>`),
     * not used to decide: the signed answer covers the request, so it answers this and nothing else.
     */
    about: optional(str({ min: 1, max: 256 })),
  }),
  set: obj('policy set request', { text: str({ min: 1, max: MAX_POLICY_TEXT_BYTES }), by: actorSchema, reason: optional(reasonSchema) }),
  get: obj('policy get request', { version: optional(int({ min: 0 })) }),
  history: obj('policy history request', { limit: optional(int({ min: 1, max: 1000 })) }),
  /** Decide without recording: under `text` (a candidate, not stored), `version`, or the version in force. */
  test: obj('policy test request', { queries: queryObjects, version: optional(int({ min: 0 })), text: optional(str({ min: 1, max: MAX_POLICY_TEXT_BYTES })) }),
} as const satisfies Record<PolicyVerb, Schema<unknown>>;

export type PolicyRequest<V extends PolicyVerb> = Infer<(typeof requestSchemas)[V]>;

/** @throws SchemaError */
export function parsePolicyRequest<V extends PolicyVerb>(verb: V, value: unknown): PolicyRequest<V> {
  return requestSchemas[verb].parse(value) as PolicyRequest<V>;
}

export function isPolicyVerb(v: unknown): v is PolicyVerb {
  return typeof v === 'string' && (Object.values(PolicyVerb) as string[]).includes(v);
}

/** One problem Cedar (or the service) found in a policy text, located when it can be. */
export interface PolicyDiagnostic {
  readonly severity: 'error' | 'warning';
  readonly message: string;
  readonly help?: string;
  /** The policy it is about (its `@id`, or `policy<N>` by position). */
  readonly policy?: string;
  /** 1-based line and column in the text. */
  readonly line?: number;
  readonly column?: number;
}

const diagnosticSchema = obj('policy diagnostic', {
  severity: literal('error', 'warning'),
  message: str({ max: 4096 }),
  help: optional(str({ max: 4096 })),
  policy: optional(str({ max: 256 })),
  line: optional(int({ min: 1 })),
  column: optional(int({ min: 1 })),
});

/** A diagnostic in one line: `3:14 [policy1] error: message (help: …)`. */
export function formatDiagnostic(d: PolicyDiagnostic, file?: string): string {
  const where = d.line !== undefined ? `${file ? `${file}:` : 'line '}${d.line}:${d.column ?? 1}` : (file ?? '');
  const parts = [where, d.policy ? `[${d.policy}]` : '', `${d.severity}:`, d.message].filter(Boolean);
  return `${parts.join(' ')}${d.help ? ` (help: ${d.help})` : ''}`;
}

const summarySchema = obj('policy version summary', {
  version: int({ min: 1 }),
  sha256: str({ max: 64 }),
  by: str({ max: 256 }),
  reason: optional(str({ max: 1000 })),
  at: str({ max: 40 }),
  bytes: int({ min: 0 }),
  valid: bool(),
});

const errorReplySchema = obj('policy error', {
  code: str({ min: 1, max: 64 }),
  message: str({ max: 16_384 }),
  diagnostics: optional(arr(diagnosticSchema, { max: 200 })),
});
export type PolicyErrorReply = Infer<typeof errorReplySchema>;

const replySchemas = {
  decide: decisionSchema,
  set: obj('policy set reply', {
    version: int({ min: 1 }),
    sha256: str({ min: 64, max: 64 }),
    /** The text is the version in force already: nothing was recorded. */
    unchanged: bool(),
    warnings: arr(diagnosticSchema, { max: 200 }),
  }),
  get: obj('policy get reply', { version: int({ min: 0 }), record: optional(versionRecordSchema), valid: optional(bool()) }),
  history: obj('policy history reply', { latest: int({ min: 0 }), versions: arr(summarySchema, { max: 1000 }) }),
  test: obj('policy test reply', {
    /** The version that decided; 0 for a candidate text or when none is set. */
    version: int({ min: 0 }),
    candidate: bool(),
    decisions: arr(decisionSchema, { max: MAX_POLICY_QUERIES }),
    combined: decisionSchema,
  }),
} as const satisfies Record<PolicyVerb, Schema<unknown>>;

export type PolicyReply<V extends PolicyVerb> = Infer<(typeof replySchemas)[V]>;

/**
 * Reads a reply: the verb's answer, or (from a policy service older than kit's one refusal
 * convention, which put refusals in the body) its `{ error }` rebuilt as a typed error.
 * @throws SchemaError | DecodeError for a reply that is neither; the rebuilt error otherwise.
 */
export function parsePolicyReply<V extends PolicyVerb>(verb: V, value: Record<string, unknown>): PolicyReply<V> {
  if (Object.hasOwn(value, 'error')) throw policyErrorFromReply(errorReplySchema.parse(value['error'], 'error'));
  return replySchemas[verb].parse(value) as PolicyReply<V>;
}

// ---------------------------------------------------------------------------------------
// Errors.

/** A policy text Cedar refused (parse or validation against Capstan's schema). Nothing was stored. */
export class PolicyInvalidError extends CapstanError {
  constructor(readonly diagnostics: readonly PolicyDiagnostic[]) {
    const errors = diagnostics.filter((d) => d.severity === 'error');
    super(ErrorCode.PolicyInvalid, `the policy is invalid (${errors.length} error${errors.length === 1 ? '' : 's'}):\n  ${errors.map((d) => formatDiagnostic(d)).join('\n  ')}`);
  }
}

/** Nobody answered on the policy subject (no policy service), or not in time. Retry later. */
export class PolicyUnavailableError extends CapstanError {
  constructor(message: string, options?: ErrorOptions) {
    super(ErrorCode.PolicyUnavailable, message, true, options);
  }
}

/** A version the tenant does not have (yet). */
export class PolicyVersionNotFoundError extends CapstanError {
  constructor(
    readonly version: number,
    readonly latest: number,
  ) {
    super(ErrorCode.PolicyVersionNotFound, `policy version ${version} does not exist (the latest is ${latest})`);
  }
}

const refusalDetailsSchema = obj('policy refusal details', { diagnostics: optional(arr(diagnosticSchema, { max: 200 })) });

/** The details a refusal carries in its body (kit's rpc convention): Cedar's diagnostics, when the error has them. */
export function policyRefusalDetails(e: CapstanError): { diagnostics: PolicyDiagnostic[] } | undefined {
  return 'diagnostics' in e && Array.isArray(e.diagnostics) ? { diagnostics: (e.diagnostics as PolicyDiagnostic[]).slice(0, 200) } : undefined;
}

/**
 * Rebuilds a policy service's refusal (code and message from its headers, details from its body).
 * @throws SchemaError for details that are not a policy refusal's
 */
export function policyErrorFromWire(code: string, message: string, details: unknown): CapstanError {
  const d = details === undefined ? {} : refusalDetailsSchema.parse(details, 'details');
  return policyErrorFromReply({ code, message, ...(d.diagnostics ? { diagnostics: d.diagnostics } : {}) });
}

function policyErrorFromReply(r: PolicyErrorReply): CapstanError {
  if (r.code === ErrorCode.PolicyInvalid) return new PolicyInvalidError(r.diagnostics ?? [{ severity: 'error', message: r.message }]);
  if (r.code === ErrorCode.PolicyUnavailable) return new PolicyUnavailableError(r.message);
  const retryable = r.code === ErrorCode.Unavailable;
  return new CapstanError(r.code as ErrorCode, r.message, retryable);
}

/** Approver groups named by `@approval("…")`: printable, at most 128 characters. */
export const APPROVERS_PATTERN = ACTOR_PATTERN;
