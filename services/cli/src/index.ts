/** @capstan/cli — the `capstan` command. Its reusable pieces for tests and tools: */
export { summarize, readDeadLetters, replayCmd } from './runs.js';
export type { RunSummary, DeadLetterView } from './runs.js';
export { runsCmd, runCmd, auditCmd, systemStatusCmd, apiGet } from './read.js';
export { readApi, DEV_CONSOLE_URL_FILE, DEV_TOKEN_FILE } from './context.js';
export type { ReadApi, DevReadFiles } from './context.js';
export { approvalsCmd, approveCmd, denyCmd, retryCmd, workersCmd, actorFlag } from './operate.js';
export { exportCmd, replayFromFileCmd, replayExport, recheckDecisions } from './review.js';
export type { ReplayReport, ReplayedRun, Recheck } from './review.js';
export { startFleetAuthority } from './fleet-authority.js';
export type { FleetAuthority } from './fleet-authority.js';
export { issueLeaf, leafNodeConfig } from './leaf.js';
export type { LeafConfigInput, LeafIssueOptions } from './leaf.js';
