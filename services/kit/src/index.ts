/**
 * @capstan/kit — runtime glue shared by Capstan's services (not a service itself):
 * NATS connections, the private nats-server launcher, tenant provisioning, the run log,
 * dead letters, logging and config helpers.
 */
export { startNatsServer, startNatsCluster, freePort, findNatsServer, NatsServerMissingError, MIN_NATS_SERVER, PROJECT_ROOT } from './nats-server.js';
export type { NatsServer, NatsServerOptions, NatsCluster, NatsClusterOptions } from './nats-server.js';
export { connectNats, readCredentials, parseCredentials, jwtSubject, jwtName, jwtIssuer, jwtTagValues, tenantConnection, permissionError, permissionViolation } from './nats.js';
export type { NatsConnection, NatsCredentials, CredentialsInfo, NatsTls, ConnectOptions, TenantConnection } from './nats.js';
export { connectAsService, connectAsTenantUser, readTenantRecord, listRegisteredTenants } from './access.js';
export type { TenantAccess, TenantFollower, AccessOptions } from './access.js';
export { openAuthStore, AuthStoreError } from './auth-store.js';
export type { AuthStore, IssuedUser } from './auth-store.js';
export {
  pushAccountJwt,
  asAdmin,
  ensurePlatform,
  pushAccounts,
  clusterShape,
  checkPlacement,
  provisionTenant,
  setTenantQuota,
  issueCredential,
  revokeCredential,
  restoreCredential,
} from './provision.js';
export type { AdminTarget, ProvisionOptions, IssueOptions, ClusterShape } from './provision.js';
export { createLogger, LOG_LEVELS } from './log.js';
export type { Logger } from './log.js';
export { envString, envInt, envBool, envLogLevel, envNatsUrl, envTenants, envNatsAuth, envPostgresUrl, envDatabaseUrl } from './env.js';
export type { Env, NatsAuthConfig } from './env.js';
export {
  ensureTenant,
  ensurePartitionCount,
  parsePartitionCount,
  leasesStreamConfig,
  ensureStreams,
  ensureConsumers,
  consumerConfigs,
  poolConsumerConfig,
  streamConfigs,
  fleetStreamConfig,
  policyStreamConfig,
  triggersStreamConfig,
  seenStreamConfig,
  SEEN_WINDOW_SECONDS,
  catalogStreamConfig,
  tenantStreamConfigs,
  placed,
  DEFAULT_TENANT_LIMITS,
  DEFAULT_CONSUMER_SETTINGS,
  WORK_MAX_DELIVER,
} from './tenant.js';
export type { TenantLimits, ConsumerSettings } from './tenant.js';
export { readRun, appendBatch, decodeEvent, publishDurably, coalescingPublisher } from './run-log.js';
export type { Batching } from './run-log.js';
export type { LoadedRun, AppendGroup, AppendOutcome, OutMsg } from './run-log.js';
export { newRunId, idempotencyHash, derivedRunId } from './ids.js';
export { deadLetter } from './dead-letter.js';
export type { DeadLetterOrigin } from './dead-letter.js';
export { createClient, isTerminalEvent, readFrom, readAdmission, writeAdmission, admissionOf } from './client.js';
export type { CapstanClient, SubmitOptions, DecisionOptions, AdmissionOptions, WorkerAdmission } from './client.js';
export { runService, serviceAccess, tenantUserAccess, telemetryConfig, startTelemetry } from './service.js';
export type { TelemetryConfig, Telemetry } from './service.js';
export {
  tracingConfig,
  startTracing,
  tracingOn,
  inSpan,
  failSpan,
  emitSpan,
  hopSpanId,
  hopTraceParent,
  beginRunTrace,
  traceParentOf,
  activeTraceParent,
  withTraceHeader,
  traceLogFields,
  SpanKind,
} from './tracing.js';
export type { TracingConfig, TracingHandle, SpanOptions, DerivedSpan, Span, Attributes } from './tracing.js';
export { workflowFingerprint } from './fingerprint.js';
export { writeExport, readExport, EXPORT_FORMAT } from './export-file.js';
export type { ExportScope, ExportInput, ExportContents, ExportedPolicy, ExportedWorkflow, StoredRecord } from './export-file.js';
export { exportRuns, collectRuns, collectWindow, collectPolicies } from './export-collect.js';
export type { ExportResult } from './export-collect.js';
export type { FingerprintSource } from './fingerprint.js';
export { HopFold, foldHops, HOP_RULES, HopKind, HopStatus } from './hops.js';
export type { Hop, HopInput, HopFoldOps } from './hops.js';
export { metrics, registry as metricsRegistry, addCollector, scrape, metricsConfig, serveMetrics } from './metrics.js';
export type { MetricsConfig, MetricsServer } from './metrics.js';
export { openDatabase, migrate, queryRows, dbErrorMessage, MIGRATIONS_FOLDER } from './db.js';
export { judgeSync, readFollowed, recordFollowed, markOutOfSync, readStreamNow, streamNow, outOfSyncReason, outOfSyncError, syncGuard, streamSideOf } from './projection-sync.js';
export type { StreamNow, FollowedStream, SyncVerdict, StreamSide } from './projection-sync.js';
export type { Database, ProjectionDb, OpenOptions } from './db.js';
export {
  listRuns,
  getRun,
  listAudit,
  listApprovals,
  listWorkers,
  projectionLag,
  readCheckpoints,
  parseTime,
  parseSince,
  parseStatus,
  parseLimit,
  parseWhere,
  DEFAULT_LIMIT,
  MAX_LIMIT,
  MAX_WHERE_PAIRS,
  getRunGovernance,
  listPolicies,
  getPolicyVersion,
  parsePolicyVersion,
  POLICY_DECISION_KINDS,
  LEASE_KIND_PREFIX,
} from './queries.js';
export type {
  RunRow,
  StepRow,
  ApprovalRow,
  WorkerRow,
  AuditRow,
  EventIndexRow,
  ListRunsOptions,
  RunsPage,
  SearchField,
  RunDetail,
  ListAuditOptions,
  AuditPage,
  ListApprovalsOptions,
  ProjectionLag,
  RunGovernance,
  PolicyVersionRow,
  PolicyVersionSummary,
} from './queries.js';
export { httpStatusOf, hostAllowed, HttpErrorCode } from './http-status.js';
export { failpoint, parseFailpoints } from './failpoint.js';
export type { Failpoint } from './failpoint.js';
export { execInSandbox, cancelInSandbox, type SandboxCallOptions, type SandboxOutcome } from './sandbox-client.js';
export { signerOf, proofHeaders, proofRecord, verifyProof } from './proof.js';
export { signWork, checkWork, signedWork, checkExecRequest } from './work-proof.js';
export type { Signer, Author, Trust } from './proof.js';
export { generateRecipient, recipientFromSeed, seal, parseRecipientKey } from './sealed-box.js';
export type { Recipient } from './sealed-box.js';
export {
  issueLease,
  redeemLease,
  claimLease,
  redeemValues,
  openLeaseValues,
  revokeRun,
  putSecret,
  rotateSecret,
  deleteSecret,
  listSecrets,
  verifyWebhook,
} from './secrets-client.js';
export type { SecretsCallOptions, LeaseScopeRef, PutSecretOptions, ChangedSecret } from './secrets-client.js';
export { createAuditSink, unavailableAuditSink, appendAuditRow, AuditUnavailableError, AuditAppend, DATA_PLANE_STREAM_SEQ } from './audit-sink.js';
export type { AuditSink, AuditIntent, DataPlaneAuditRow } from './audit-sink.js';
export {
  answerProofSubject,
  askPolicy,
  askPolicySigned,
  checkSignedPolicyAnswer,
  credentialAbout,
  type SignedPolicyAnswer,
  decideAt,
  setPolicy,
  getPolicy,
  policyHistory,
  testPolicy,
} from './policy-client.js';
export type { PolicyCallOptions, SetPolicyInput, TestPolicyInput } from './policy-client.js';
export { tailStream } from './tail.js';
export type { StreamTail, TailOptions } from './tail.js';
export {
  slotsOf,
  nextSlots,
  checkScheduleSpec,
  planFiring,
  scheduleRunId,
  triggerRunId,
  webhookRunId,
  parseEvery,
  MISSED_AFTER_MS,
  BUFFER_RECHECK_MS,
  MAX_DUE_SLOTS,
} from './schedules.js';
export type { Slots, FiringInput, FiringPlan } from './schedules.js';
export { readSchedule, readScheduleState, listScheduleRecords, listSchedules, sendScheduleCommand, readRoute, listRoutes, writeRoute, workflowCatalog } from './triggers-client.js';
export type { Stored, ScheduleView, WorkflowInfo } from './triggers-client.js';
export { callService, refuseRequest, refusalProofSubject, answerRequest, wireError } from './rpc.js';
export type { ServiceCall, RefusalOptions } from './rpc.js';
export { putEntity, deleteEntity, getEntity, listEntities, previewQuery, previewRunId, runDatasyncStep } from './datasync-client.js';
export type { DatasyncCallOptions, PutEntityInput, DatasyncStepOptions, DatasyncStepOutcome } from './datasync-client.js';
export { parseAllowList, parseDnsServers, refusalOf, ownAddresses, resolveChecked } from './addresses.js';
export type { AllowEntry, AddressRules } from './addresses.js';
