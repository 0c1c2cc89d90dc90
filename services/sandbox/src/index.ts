/**
 * @capstan/sandbox — the data plane's trust boundary: sandbox backends (Docker first), the
 * warm pool, the tool runner's control channel, and the service that runs sandboxed steps
 * (modes 1–3) for workers over NATS.
 */
export { createSandboxService, type SandboxService, type SandboxServiceOptions } from './app.js';
export { loadConfig, type Config } from './config.js';
export {
  nullBackend,
  DEFAULT_LIMITS,
  SandboxUnavailableError,
  SandboxConflictError,
  type SandboxBackend,
  type BackendSandbox,
  type SandboxLimits,
  type SandboxRuntime,
  type SandboxState,
  type CreateOptions,
  type ListedSandbox,
} from './backend.js';
export { dockerBackend, RUNNER_CAPABILITIES } from './docker.js';
export { SandboxPools, Labels, identityScope, type Claimed, type PoolOptions, type PoolKey, type IdentityReuse } from './pool.js';
export { refusalOf, resolveChecked, parseAllowList, parseDnsServers, EgressRefusedError, type EgressRules, type AllowEntry } from './egress.js';
export { fromSandbox, TEXT_LIMITS } from './untrusted.js';
export { RunnerChannel, SandboxLostError } from './channel.js';
export { fileLeases, natsLeases, noLeases, type LeaseRedeemer, type LeaseScope } from './leases.js';
export { Redactor } from './outputs.js';
export { AGENTS, type AgentAdapter } from './agent-adapters.js';
export { isCleanProof, lineSplitter, MAX_FRAME_BYTES, STEP_UID, STEP_GID, type ScrubProof } from './runner/protocol.js';
export { ensureSandboxImage, SandboxImageError, SANDBOX_UID, SANDBOX_GID, type SandboxImage, type EnsureSandboxImageOptions } from './image.js';
