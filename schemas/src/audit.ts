/**
 * Every `kind` of an audit-log row, spelled once. The projector writes the run, approval,
 * policy, worker and trigger kinds; the secrets-lease service the lease and secret kinds;
 * the sandbox service, the worker and the data-sync service their intents. Readers (the
 * console's API, and the CLI through it) filter by these values.
 */
export const AuditKind = {
  Signaled: 'run.signaled',
  CancelRequested: 'run.cancel-requested',
  Retried: 'run.retried',
  ApprovalDecided: 'approval.decided',
  PolicyDecided: 'policy.decided',
  CredentialDecided: 'credential.decided',
  WorkerApproved: 'worker.approved',
  WorkerRevoked: 'worker.revoked',
  ScheduleCreated: 'schedule.created',
  SchedulePaused: 'schedule.paused',
  ScheduleResumed: 'schedule.resumed',
  ScheduleTriggered: 'schedule.triggered',
  ScheduleDeleted: 'schedule.deleted',
  RouteSaved: 'route.saved',
  RouteDisabled: 'route.disabled',
  RouteDeleted: 'route.deleted',
  LeaseIssued: 'lease.issued',
  LeaseClaimed: 'lease.claimed',
  LeaseRedeemed: 'lease.redeemed',
  LeaseDenied: 'lease.denied',
  LeaseRevoked: 'lease.revoked',
  LeaseReopened: 'lease.reopened',
  SecretPut: 'secret.put',
  SecretRotated: 'secret.rotated',
  SecretRefreshed: 'secret.refreshed',
  /** A refresh that stored nothing: its endpoint refused, an unbound secret named, the issuer failing. */
  SecretRefreshFailed: 'secret.refresh_failed',
  SecretDeleted: 'secret.deleted',
  EgressDenied: 'egress.denied',
  EgressConnect: 'egress.connect',
  ExternalWriteIntent: 'external_write.intent',
  DatasyncLoadIntent: 'datasync.load.intent',
  DatasyncPreview: 'datasync.preview',
} as const;

export type AuditKind = (typeof AuditKind)[keyof typeof AuditKind];

/** The audit kinds of a policy answer recorded by a run. */
export const POLICY_DECISION_KINDS = [AuditKind.PolicyDecided, AuditKind.CredentialDecided] as const;
/** The audit kinds of the secrets-lease service's leases share this prefix. */
export const LEASE_KIND_PREFIX = 'lease.';
