/**
 * Compiling a tenant's policy text: Cedar parses it and validates it (strict mode) against
 * Capstan's schema, and Capstan adds its own rules on annotations. The answer is the compiled
 * set, or every problem at once as Cedar worded it, located by line and column.
 *
 * Policy ids: `@id("…")` when a policy has one, else `policy<N>` by position (0-based), as
 * Cedar names them. Decisions name these ids, so an `@id` keeps a policy's name stable across
 * versions. `@approval("group")` on a permit makes what it alone allows needs-approval;
 * `@self_approval("allowed")` beside it lets the run's requester be its approver.
 */
import { createHash } from 'node:crypto';
import * as cedar from './cedar.js';
import { APPROVERS_PATTERN, MAX_POLICY_TEXT_BYTES, POLICY_DECISION_LIMITS, type PolicyDiagnostic } from '@capstan/schemas';
import { CEDAR_SCHEMA, FENCE_POLICIES, RESERVED_ID_PREFIX } from './cedar-schema.js';

/** One policy of a compiled set. */
export interface CompiledPolicy {
  readonly id: string;
  readonly effect: 'permit' | 'forbid';
  /** The approver group of a permit that asks for a person. */
  readonly approval?: string;
  /** `@self_approval("allowed")` beside `@approval`: the run's requester may approve it too. */
  readonly selfApproval?: boolean;
  /** Position in the text (0-based) and the line it starts on (1-based). */
  readonly index: number;
  readonly line: number;
}

/** A tenant's policy text, compiled: what {@link evaluate} decides with. Immutable. */
export interface CompiledPolicySet {
  readonly text: string;
  /** Hex SHA-256 of the text (UTF-8). */
  readonly sha256: string;
  /** The tenant's policies in text order. */
  readonly policies: readonly CompiledPolicy[];
  readonly byId: ReadonlyMap<string, CompiledPolicy>;
  /** What Cedar evaluates: the tenant's policies by id, plus the tenant fences. */
  readonly cedarPolicies: Readonly<Record<string, string>>;
  /** Cedar's warnings (the set is usable). */
  readonly warnings: readonly PolicyDiagnostic[];
}

export type CompileResult =
  | { readonly ok: true; readonly policySet: CompiledPolicySet; readonly diagnostics: readonly PolicyDiagnostic[] }
  | { readonly ok: false; readonly diagnostics: readonly PolicyDiagnostic[] };

/** Ids tenants may give with `@id`: no spaces or quotes, at most 128 characters. */
export const POLICY_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/;

export function sha256Hex(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

/** Maps Cedar's byte offsets in the text to 1-based lines and columns. */
function locator(text: string): (byteOffset: number) => { line: number; column: number } {
  const bytes = Buffer.from(text, 'utf8');
  return (offset) => {
    const before = bytes.subarray(0, Math.max(0, Math.min(offset, bytes.length))).toString('utf8');
    const nl = before.lastIndexOf('\n');
    let line = 1;
    for (let i = before.indexOf('\n'); i >= 0; i = before.indexOf('\n', i + 1)) line++;
    return { line, column: before.length - nl };
  };
}

function diagnostic(severity: PolicyDiagnostic['severity'], e: cedar.DetailedError, locate: ReturnType<typeof locator>, policy?: string): PolicyDiagnostic {
  const at = e.sourceLocations?.[0];
  const where = at ? locate(at.start) : undefined;
  const labels = (e.sourceLocations ?? []).map((l) => l.label).filter((l): l is string => !!l);
  const help = [e.help, ...labels].filter((h): h is string => !!h).join('; ');
  const cut = (x: string) => (x.length > 4000 ? `${x.slice(0, 3999)}…` : x);
  return {
    severity,
    message: cut(e.message),
    ...(help ? { help: cut(help) } : {}),
    ...(policy !== undefined ? { policy } : {}),
    ...(where ? { line: where.line, column: where.column } : {}),
  };
}

/** Cedar reports parts sorted by id; their places in the text give their positions. */
function partsInTextOrder(text: string, parts: readonly string[]): { part: string; offset: number }[] {
  const next = new Map<string, number>();
  const out = parts.map((part) => {
    const from = next.get(part) ?? 0;
    const offset = text.indexOf(part, from);
    next.set(part, offset < 0 ? from : offset + 1);
    return { part, offset: offset < 0 ? Number.MAX_SAFE_INTEGER : offset };
  });
  return out.sort((a, b) => a.offset - b.offset);
}

/**
 * Parses and validates `text` against Capstan's schema. Never throws: anything wrong (syntax,
 * unknown entity types, actions or attributes, type errors, a misused annotation, a text too
 * large) is an error diagnostic and `ok: false`. Warnings (an impossible policy, say) leave
 * the set usable.
 */
export function compilePolicySet(text: string): CompileResult {
  const problems: PolicyDiagnostic[] = [];
  if (typeof text !== 'string') return { ok: false, diagnostics: [{ severity: 'error', message: 'the policy must be text' }] };
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > MAX_POLICY_TEXT_BYTES) {
    return { ok: false, diagnostics: [{ severity: 'error', message: `the policy is ${bytes} bytes; the limit is ${MAX_POLICY_TEXT_BYTES}` }] };
  }
  const locate = locator(text);
  let answer: cedar.ValidationAnswer;
  let parts: cedar.PolicySetTextToPartsAnswer;
  try {
    answer = cedar.validate({ schema: CEDAR_SCHEMA, policies: { staticPolicies: text }, validationSettings: { mode: 'strict' } });
    parts = cedar.policySetTextToParts(text);
  } catch (e) {
    // Cedar answers problems as data; a throw is a fault of the binding, reported the same way.
    return { ok: false, diagnostics: [{ severity: 'error', message: `cedar could not read the policy: ${(e as Error).message}` }] };
  }
  if (answer.type === 'failure') return { ok: false, diagnostics: answer.errors.map((e) => diagnostic('error', e, locate)) };
  if (parts.type === 'failure') return { ok: false, diagnostics: parts.errors.map((e) => diagnostic('error', e, locate)) };
  if (parts.policy_templates.length > 0) {
    problems.push({ severity: 'error', message: 'policy templates (with ?principal or ?resource slots) are not supported: write static policies' });
  }

  // Positional ids (as Cedar names them in diagnostics) → the ids decisions will carry.
  const policies: CompiledPolicy[] = [];
  const cedarPolicies: Record<string, string> = {};
  const idOf = new Map<string, string>();
  partsInTextOrder(text, parts.policies).forEach(({ part, offset }, index) => {
    const positional = `policy${index}`;
    const json = cedar.policyToJson(part);
    const where = offset === Number.MAX_SAFE_INTEGER ? undefined : locate(Buffer.byteLength(text.slice(0, offset), 'utf8'));
    const at = where ? { line: where.line, column: where.column } : {};
    if (json.type === 'failure') {
      problems.push(...json.errors.map((e) => ({ ...diagnostic('error', e, locate, positional), ...at })));
      return;
    }
    const annotations = json.json.annotations ?? {};
    const given = annotations['id'];
    let id = positional;
    if (given !== undefined) {
      if (!POLICY_ID_PATTERN.test(given)) {
        problems.push({ severity: 'error', policy: positional, ...at, message: `@id(${JSON.stringify(given.slice(0, 140))}) must match ${POLICY_ID_PATTERN.source}` });
      } else if (given.toLowerCase().startsWith(RESERVED_ID_PREFIX)) {
        problems.push({
          severity: 'error',
          policy: positional,
          ...at,
          message: `@id(${JSON.stringify(given)}): ids starting with "${RESERVED_ID_PREFIX}" are reserved for the platform`,
        });
      } else {
        id = given;
      }
    }
    if (Object.hasOwn(cedarPolicies, id)) {
      problems.push({ severity: 'error', policy: id, ...at, message: `policy id ${JSON.stringify(id)} is used twice` });
      return;
    }
    const approval = annotations['approval'];
    if (approval !== undefined) {
      if (json.json.effect === 'forbid') {
        problems.push({ severity: 'error', policy: id, ...at, message: '@approval belongs on a permit: a forbid always denies' });
      } else if (approval.length > POLICY_DECISION_LIMITS.approvers || !APPROVERS_PATTERN.test(approval)) {
        problems.push({
          severity: 'error',
          policy: id,
          ...at,
          message: `@approval names the approver group: 1 to ${POLICY_DECISION_LIMITS.approvers} printable characters, no surrounding spaces`,
        });
      }
    }
    // Without it a requester never approves their own run: the four-eyes rule is the default.
    const self = annotations['self_approval'];
    if (self !== undefined) {
      if (self !== 'allowed') {
        problems.push({ severity: 'error', policy: id, ...at, message: '@self_approval takes one value: "allowed"' });
      } else if (approval === undefined) {
        problems.push({ severity: 'error', policy: id, ...at, message: '@self_approval belongs beside @approval on a permit' });
      }
    }
    idOf.set(positional, id);
    cedarPolicies[id] = part;
    const needsPerson = approval !== undefined && json.json.effect === 'permit';
    policies.push({
      id,
      effect: json.json.effect,
      ...(needsPerson ? { approval } : {}),
      ...(needsPerson && self === 'allowed' ? { selfApproval: true as const } : {}),
      index,
      line: where?.line ?? 1,
    });
  });

  for (const v of answer.validationErrors) problems.push(diagnostic('error', v.error, locate, idOf.get(v.policyId) ?? v.policyId));
  const warnings = [
    ...answer.validationWarnings.map((v) => diagnostic('warning', v.error, locate, idOf.get(v.policyId) ?? v.policyId)),
    ...answer.otherWarnings.map((e) => diagnostic('warning', e, locate)),
  ];
  if (policies.length === 0 && problems.length === 0) warnings.push({ severity: 'warning', message: 'the text holds no policies: every request is denied' });
  const byPlace = (a: PolicyDiagnostic, b: PolicyDiagnostic) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0);
  warnings.sort(byPlace);
  if (problems.length > 0) return { ok: false, diagnostics: [...problems.sort(byPlace), ...warnings] };
  Object.assign(cedarPolicies, FENCE_POLICIES);
  const policySet: CompiledPolicySet = Object.freeze({
    text,
    sha256: sha256Hex(text),
    policies: Object.freeze(policies),
    byId: new Map(policies.map((p) => [p.id, p])),
    cedarPolicies: Object.freeze(cedarPolicies),
    warnings: Object.freeze(warnings),
  });
  return { ok: true, policySet, diagnostics: warnings };
}
