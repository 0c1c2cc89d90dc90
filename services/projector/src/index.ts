/**
 * @capstan/projector — folds the run streams into the Postgres projections (runs, steps,
 * events, approvals, search fields, the audit log), exactly once, and can rebuild and
 * verify them from the streams. The projections are never the truth: the streams are.
 */
export { loadConfig } from './config.js';
export type { Config } from './config.js';
export { createProjector } from './app.js';
export type { ProjectorApp, TenantStats } from './app.js';
export type { TenantProjectorStats } from './tenant-projector.js';
export { Failpoints } from './tenant-projector.js';
export { projectEvent, projectRun, viewFromRows, decodeStored, chainDigest, pgText, stepKey, EMPTY_VIEW, StepOutcome, ApprovalStatus, AuditKind } from './projection.js';
export type { RunView, StoredEvent, StreamMessage, Projected, RunRow, StepRow, EventRow, ApprovalRow, SearchRow, AuditRow } from './projection.js';
export { applyBatch, applyLocked, lockTenant, readCheckpoint, foldBatch, deadLetterOf } from './apply.js';
export type { ApplyOptions, ApplyResult, BatchRows, DeadLetterRow } from './apply.js';
export { rebuildProjections } from './rebuild.js';
export type { RebuildResult, RebuiltTenant, RebuildOptions } from './rebuild.js';
export { verifyProjections } from './verify.js';
export type { VerifyReport, VerifiedTenant, Mismatch, BrokenChain, ProjectionTable } from './verify.js';
export { readRunStream } from './stream.js';
export { projectAdmission, applyAdmission, rebuildAdmissions, readFleetCheckpoint, FLEET_AUDIT_RUN_ID } from './fleet.js';
export type { AdmissionRow, FleetMessage } from './fleet.js';
export { projectPolicyVersion, applyPolicyVersion, rebuildPolicies, readPolicyCheckpoint, followPolicies, POLICY_AUDIT_KIND, POLICY_AUDIT_RUN_ID } from './policies.js';
export type { PolicyRow, PolicyMessage, PolicyFollower } from './policies.js';
export { projectTrigger, applyTrigger, rebuildTriggers, followTriggers, TriggerAuditKind, SCHEDULES, ROUTES } from './triggers.js';
export type { ScheduleRow, RouteRow } from './triggers.js';
export { projectCatalogRecord, applyCatalogRecord, rebuildCatalog, readCatalogCheckpoint, followCatalog, catalogAuditRunId } from './catalog.js';
export type { CatalogRow } from './catalog.js';
