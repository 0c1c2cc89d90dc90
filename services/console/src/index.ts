/**
 * @capstan/console — the operator console's server: sign-in (people) and API tokens
 * (programs: the `capstan` CLI's reads), a tenant-scoped JSON API over the projections, live
 * run updates (SSE), actions published as NATS commands, and the web UI's static files. The
 * API contract the UI and the CLI code against is `api-types.ts`.
 */
export { createConsole, localAdmin, defaultWebDir } from './app.js';
export type { Console, ConsoleOptions } from './app.js';
export { loadConfig, DEFAULT_CONSOLE_PORT, MIN_SECRET_BYTES } from './config.js';
export type { Config, LoadOptions } from './config.js';
export { parseUsers, hashPassword, verifyPassword, roleIn, groupsIn } from './users.js';
export { requireAction } from './http.js';
export type { ConsoleUser, TenantAccessGrant } from './users.js';
export { createSessions, createLinkTokens, SESSION_COOKIE } from './session.js';
export { newApiToken, tokenHash, indexTokens, API_TOKEN_PATTERN } from './tokens.js';
export type { ApiToken, TokenIndex, TokenVerdict } from './tokens.js';
export type { Session, Sessions, LinkTokens } from './session.js';
export { explainRun, sayDuration } from './explain.js';
export type { ExplainInput } from './explain.js';
export { buildTrace, toRunSummary, toStepAttempt, toWorkerInfo, toApproval, toAuditEntry, toTimelineEvent } from './views.js';
export { csvField } from './routes-audit.js';
export * from './api-types.js';
