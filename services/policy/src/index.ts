/**
 * @capstan/policy — versioned per-tenant policies on Cedar: Capstan's Cedar schema, compiling
 * a tenant's policy text (Cedar's own diagnostics), deciding queries (allow, deny,
 * needs-approval; default deny), and the service answering `cap.<t>.svc.policy.*` with
 * versions kept immutably in the tenant's `CAP_POLICY_<t>` stream.
 */
export { CEDAR_SCHEMA, EntityType, RESOURCE_OF, FENCE_POLICIES, RESERVED_ID_PREFIX } from './cedar-schema.js';
export { compilePolicySet, sha256Hex, POLICY_ID_PATTERN } from './compile.js';
export type { CompiledPolicy, CompiledPolicySet, CompileResult } from './compile.js';
export { evaluate, decideAll, authorize, buildRequest, checkQuery, requestProblems, uidOf, QueryError } from './evaluate.js';
export type { PolicyRequest, PolicySetInput, PolicyEntity, Uid } from './evaluate.js';
export { createPolicyService, type PolicyService } from './app.js';
export { loadConfig, type Config } from './config.js';
export { openTenantVersions, readStored, NoPolicyStreamError, type TenantVersions, type StoredVersion } from './store.js';
