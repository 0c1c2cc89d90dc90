/**
 * Every NATS subject, stream, consumer and header name Capstan uses, spelled here and
 * nowhere else. The tenant is always the second token, so the single permission
 * `cap.<tenant>.>` fences a tenant. Builders only accept validated ids.
 *
 * | what                 | subject                             | stream            |
 * |----------------------|-------------------------------------|-------------------|
 * | run event log        | cap.<t>.runs.<runId>                | CAP_RUNS_<t>      |
 * | idempotency claims   | cap.<t>.idem.<keyHash>              | CAP_RUNS_<t>      |
 * | commands             | cap.<t>.cmd.<verb>                  | CAP_CMDS_<t>      |
 * | durable timers       | cap.<t>.timers.<runId>.<timerId>    | CAP_CMDS_<t>      |
 * | work for a pool      | cap.<t>.work.<pool>                 | CAP_WORK_<t>      |
 * | dead letters         | cap.<t>.dlq.<source>                | CAP_DLQ_<t>       |
 * | worker admission     | cap.<t>.fleet.<workerId>            | CAP_FLEET_<t>     |
 * | policy versions      | cap.<t>.policy.versions             | CAP_POLICY_<t>    |
 * | data-sync catalog    | cap.<t>.catalog.<kind>.<id>         | CAP_CATALOG_<t>   |
 * | service requests     | cap.<t>.svc.<service>.<verb>        | (core NATS)       |
 * | 3b credential route  | cap.<t>.svc.jit.<routeId>           | (core NATS)       |
 * | schedules            | cap.<t>.schedules.<id>              | CAP_TRIGGERS_<t>  |
 * | schedule state       | cap.<t>.schedstate.<id>             | CAP_TRIGGERS_<t>  |
 * | schedule wake-ups    | cap.<t>.timers.schedule.<id>        | CAP_CMDS_<t>      |
 * | webhook routes       | cap.<t>.routes.<id>                 | CAP_TRIGGERS_<t>  |
 * | webhook ids seen     | cap.<t>.seen.<hash>                 | CAP_SEEN_<t>      |
 * | partition count      | cap.<t>.orch.partitions             | CAP_LEASES_<t>    |
 * | partition leases     | cap.<t>.orch.lease.<partition>      | CAP_LEASES_<t>    |
 * | orchestrator members | cap.<t>.orch.member.<instance>      | CAP_LEASES_<t>    |
 * | command to an owner  | cap.<t>.svc.orch.<instance>         | (core NATS)       |
 *
 * Each tenant is its own NATS account; the platform's own account holds the tenant
 * registry (`capstan.tenants.<t>`, stream CAPSTAN_TENANTS). The JetStream API subjects a
 * role may use (`JsApi`) are spelled here too, so permissions and code cannot drift.
 */
import { ErrorCode, InvalidNameError, showValue } from './errors.js';
import type { RunId, TenantId } from './ids.js';

/** A subject token we build from our own vocabulary (pool names, verbs, timer ids). */
export const TOKEN_PATTERN = /^[a-z0-9][a-z0-9_-]{0,63}$/;
/** A search field key: a token in either case (keys are user-chosen, never a subject token). */
export const SEARCH_KEY_PATTERN = new RegExp(TOKEN_PATTERN.source, 'i');

export function parseToken(kind: string, value: unknown): string {
  if (typeof value === 'string' && TOKEN_PATTERN.test(value)) return value;
  throw new InvalidNameError(ErrorCode.InvalidName, kind, showValue(value), TOKEN_PATTERN.source);
}

/**
 * The handler a child step's row shows in the steps projection: `child:<workflow>` (its
 * worker column is the child run's id, the link readers follow from a parent to a child).
 */
export const CHILD_HANDLER = 'child:';

/** The command verbs the control plane accepts on `cap.<t>.cmd.<verb>`. */
export const CommandVerb = {
  Submit: 'submit',
  Cancel: 'cancel',
  Signal: 'signal',
  Started: 'started',
  Result: 'result',
  Timer: 'timer',
  Approve: 'approve',
  Deny: 'deny',
  Retry: 'retry',
  /** The orchestrator's own: the policy's answer to a step's `policy.requested`. */
  Policy: 'policy',
  /** A worker's: the policy's answer to a running step's credential request (mode 3b). */
  Credential: 'credential',
  /** The orchestrator's own: a child run's outcome, for the parent run. */
  Child: 'child',
} as const;
export type CommandVerb = (typeof CommandVerb)[keyof typeof CommandVerb];

/**
 * Commands about schedules, on `cap.<t>.cmd.<verb>` next to the run commands (the same
 * orchestrator consumer takes them) but not about one run: `schedule` changes a schedule,
 * `fire` is a schedule's wake-up, published by its JetStream message schedule.
 */
export const TriggerVerb = { Schedule: 'schedule', Fire: 'fire' } as const;
export type TriggerVerb = (typeof TriggerVerb)[keyof typeof TriggerVerb];

/** Where dead letters come from: `cap.<t>.dlq.<source>`. */
export const DeadLetterSource = {
  Command: 'cmd',
  Work: 'work',
} as const;
export type DeadLetterSource = (typeof DeadLetterSource)[keyof typeof DeadLetterSource];

/** What the secrets-lease service answers on `cap.<t>.svc.secrets.<verb>`. */
export const SecretsVerb = {
  /** Issue a lease for key names (the worker). */
  Lease: 'lease',
  /** Redeem a lease for values sealed to the caller's key (the sandbox service only). */
  Redeem: 'redeem',
  /** Claim a lease for the sandbox that will redeem it: its TTL counts from here (the sandbox service only). */
  Claim: 'claim',
  /** Revoke a run's open leases, and any later ones. */
  Revoke: 'revoke',
  /** The key `put`/`rotate` values are sealed to (administration). */
  Key: 'key',
  Put: 'put',
  List: 'list',
  Rotate: 'rotate',
  Delete: 'delete',
  /** Check a webhook delivery's signature against named secrets; the secret never leaves the service. */
  Verify: 'verify',
} as const;
export type SecretsVerb = (typeof SecretsVerb)[keyof typeof SecretsVerb];

/** The verbs of the policy service: `cap.<t>.svc.policy.<verb>`. */
export const PolicyVerb = { Decide: 'decide', Set: 'set', Get: 'get', History: 'history', Test: 'test' } as const;
export type PolicyVerb = (typeof PolicyVerb)[keyof typeof PolicyVerb];

/** The verbs of the datasync service: `cap.<t>.svc.datasync.<verb>`. */
export const DatasyncVerb = {
  /** Create or change a connection, model or destination (its spec stays in the data plane). */
  Put: 'put',
  Delete: 'delete',
  Get: 'get',
  List: 'list',
  /** Run one pipeline step (the worker's built-in pipeline handlers): replies on an inbox. */
  Step: 'step',
  /** Stop a running step (its attempt timed out or the worker stops). */
  Cancel: 'cancel',
  /** The bounded preview query (the console, the CLI). */
  Preview: 'preview',
} as const;
export type DatasyncVerb = (typeof DatasyncVerb)[keyof typeof DatasyncVerb];

const PREFIX = 'cap';

export const Subjects = {
  /** The one subject holding a run's events. */
  run: (t: TenantId, runId: RunId) => `${PREFIX}.${t}.runs.${runId}`,
  /** All run subjects of a tenant (for consumers over every run). */
  allRuns: (t: TenantId) => `${PREFIX}.${t}.runs.*`,
  /** An idempotency-key claim; `keyHash` is a hex digest made by the platform. */
  idempotency: (t: TenantId, keyHash: string) => `${PREFIX}.${t}.idem.${parseToken('idempotency hash', keyHash)}`,
  allIdempotency: (t: TenantId) => `${PREFIX}.${t}.idem.*`,
  command: (t: TenantId, verb: CommandVerb) => `${PREFIX}.${t}.cmd.${verb}`,
  allCommands: (t: TenantId) => `${PREFIX}.${t}.cmd.*`,
  /** The holder of one durable timer (a JetStream message schedule). */
  timer: (t: TenantId, runId: RunId, timerId: string) => `${PREFIX}.${t}.timers.${runId}.${parseToken('timer id', timerId)}`,
  allTimers: (t: TenantId) => `${PREFIX}.${t}.timers.>`,
  work: (t: TenantId, pool: string) => `${PREFIX}.${t}.work.${parseToken('pool', pool)}`,
  allWork: (t: TenantId) => `${PREFIX}.${t}.work.*`,
  deadLetter: (t: TenantId, source: DeadLetterSource) => `${PREFIX}.${t}.dlq.${source}`,
  allDeadLetters: (t: TenantId) => `${PREFIX}.${t}.dlq.*`,
  /** A worker's admission records (approved / revoked); the last one is its state. */
  fleet: (t: TenantId, workerId: string) => `${PREFIX}.${t}.fleet.${parseToken('worker id', workerId)}`,
  allFleet: (t: TenantId) => `${PREFIX}.${t}.fleet.*`,
  /** Worker heartbeats with capability labels (core NATS, not stored). */
  workerHeartbeat: (t: TenantId) => `${PREFIX}.${t}.svc.workers.heartbeat`,
  /** Requests to the sandbox service to run one sandboxed attempt (core NATS, request/replies). */
  sandboxExec: (t: TenantId) => `${PREFIX}.${t}.svc.sandbox.exec`,
  /** Stop one sandboxed attempt at once (its run was cancelled): `{ runId, step, attempt }` (core NATS request). */
  sandboxCancel: (t: TenantId) => `${PREFIX}.${t}.svc.sandbox.cancel`,
  /**
   * Step attempts the run no longer wants (`{ runId, step, attempt }`), from the orchestrator to
   * every worker of the tenant (core NATS, no queue group): the one running it aborts it.
   */
  stepCancel: (t: TenantId) => `${PREFIX}.${t}.svc.workers.cancel`,
  /** Requests to the secrets-lease service (core NATS, request/reply). */
  secrets: (t: TenantId, verb: SecretsVerb) => `${PREFIX}.${t}.svc.secrets.${verb}`,
  /** A tenant's policy versions: version N is the Nth message (stored, immutable). */
  policyVersions: (t: TenantId) => `${PREFIX}.${t}.policy.versions`,
  /** Requests to the policy service (core NATS, request/reply). */
  policy: (t: TenantId, verb: PolicyVerb) => `${PREFIX}.${t}.svc.policy.${verb}`,
  /**
   * Where a sandboxed mode-3b step's credential requests reach the worker running it: one
   * route id per attempt, made by the worker. Only workers may listen and only the sandbox
   * service may ask there, so a request cannot come from anyone else.
   */
  jitRoute: (t: TenantId, routeId: string) => `${PREFIX}.${t}.svc.jit.${parseToken('credential route', routeId)}`,
  allJitRoutes: (t: TenantId) => `${PREFIX}.${t}.svc.jit.*`,
  /** Every service request subject of a tenant (`cap.<t>.svc.<service>.<verb>`). */
  svcVerbs: (t: TenantId, service: string) => `${PREFIX}.${t}.svc.${parseToken('service', service)}.*`,
  /** A command about schedules (`schedule`) or a schedule's wake-up (`fire`). */
  triggerCommand: (t: TenantId, verb: TriggerVerb) => `${PREFIX}.${t}.cmd.${verb}`,
  /** A schedule's one pending wake-up (a message schedule: a new one replaces the old). */
  scheduleWake: (t: TenantId, scheduleId: string) => `${PREFIX}.${t}.timers.schedule.${parseToken('schedule id', scheduleId)}`,
  /** A schedule's records: the last one is the schedule. */
  schedule: (t: TenantId, scheduleId: string) => `${PREFIX}.${t}.schedules.${parseToken('schedule id', scheduleId)}`,
  allSchedules: (t: TenantId) => `${PREFIX}.${t}.schedules.*`,
  /** Where a schedule's firing stands (the orchestrator's, written per decision). */
  scheduleState: (t: TenantId, scheduleId: string) => `${PREFIX}.${t}.schedstate.${parseToken('schedule id', scheduleId)}`,
  allScheduleStates: (t: TenantId) => `${PREFIX}.${t}.schedstate.*`,
  /** A webhook route's records: the last one is the route. */
  route: (t: TenantId, routeId: string) => `${PREFIX}.${t}.routes.${parseToken('route id', routeId)}`,
  allRoutes: (t: TenantId) => `${PREFIX}.${t}.routes.*`,
  /** A webhook id ingress accepted (a hex digest made by ingress), kept for the replay window. */
  seenDelivery: (t: TenantId, hash: string) => `${PREFIX}.${t}.seen.${parseToken('delivery hash', hash)}`,
  allSeen: (t: TenantId) => `${PREFIX}.${t}.seen.*`,
  /** The registered workflows, answered by the orchestrators (core NATS, request/reply). */
  workflowCatalog: (t: TenantId) => `${PREFIX}.${t}.svc.workflows.list`,
  /** Requests to the datasync service (core NATS). */
  datasync: (t: TenantId, verb: DatasyncVerb) => `${PREFIX}.${t}.svc.datasync.${verb}`,
  /** A catalog entity's records (connection, model, destination): the last one is its state. */
  catalog: (t: TenantId, kind: string, id: string) => `${PREFIX}.${t}.catalog.${parseToken('catalog kind', kind)}.${parseToken('catalog id', id)}`,
  allCatalog: (t: TenantId) => `${PREFIX}.${t}.catalog.>`,
  /** How many partitions the tenant's runs are hashed to: written once, by the admin. */
  partitionCount: (t: TenantId) => `${PREFIX}.${t}.orch.partitions`,
  /** The lease of one partition: its last record names the orchestrator instance that owns it. */
  partitionLease: (t: TenantId, partition: number) => `${PREFIX}.${t}.orch.lease.${partitionToken(partition)}`,
  allPartitionLeases: (t: TenantId) => `${PREFIX}.${t}.orch.lease.*`,
  /** An orchestrator instance's presence (a record with a TTL, renewed while it runs). */
  orchestratorMember: (t: TenantId, instance: string) => `${PREFIX}.${t}.orch.member.${parseToken('orchestrator instance', instance)}`,
  allOrchestratorMembers: (t: TenantId) => `${PREFIX}.${t}.orch.member.*`,
  /** Commands handed to the instance owning their run's partition (core NATS, request/reply). */
  orchestratorInbox: (t: TenantId, instance: string) => `${PREFIX}.${t}.svc.orch.${parseToken('orchestrator instance', instance)}`,
  allOrchestratorInboxes: (t: TenantId) => `${PREFIX}.${t}.svc.orch.*`,
} as const;

function partitionToken(p: number): string {
  if (!Number.isInteger(p) || p < 0 || p >= MAX_PARTITIONS) throw new InvalidNameError(ErrorCode.InvalidName, 'partition', showValue(p), `0..${MAX_PARTITIONS - 1}`);
  return String(p);
}

/** Partitions a tenant's runs are hashed to unless provisioning says otherwise. */
export const DEFAULT_PARTITIONS = 16;
export const MAX_PARTITIONS = 1024;

/**
 * The partition a run belongs to: FNV-1a (32 bit) of its id, modulo the tenant's partition
 * count. Fixed forever for a given count, which is why the count is written once.
 */
export function partitionOf(runId: string, partitions: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < runId.length; i++) {
    h ^= runId.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % partitions;
}

/** Reads the tenant token back out of a subject; `undefined` if it is not a Capstan subject. */
export function tenantTokenOf(subject: string): string | undefined {
  const parts = subject.split('.');
  return parts[0] === PREFIX ? parts[1] : undefined;
}

/** Reads the run id out of a run subject (`cap.<t>.runs.<runId>`). */
export function runIdOfSubject(subject: string): string | undefined {
  const parts = subject.split('.');
  return parts.length === 4 && parts[0] === PREFIX && parts[2] === 'runs' ? parts[3] : undefined;
}

export const StreamKind = { Runs: 'RUNS', Commands: 'CMDS', Work: 'WORK', DeadLetters: 'DLQ' } as const;
export type StreamKind = (typeof StreamKind)[keyof typeof StreamKind];

const STREAM_PREFIX = 'CAP_';

export const Streams = {
  runs: (t: TenantId) => `${STREAM_PREFIX}RUNS_${t}`,
  commands: (t: TenantId) => `${STREAM_PREFIX}CMDS_${t}`,
  work: (t: TenantId) => `${STREAM_PREFIX}WORK_${t}`,
  deadLetters: (t: TenantId) => `${STREAM_PREFIX}DLQ_${t}`,
  /** Worker admission: one subject per worker id, its last message is the worker's state. */
  fleet: (t: TenantId) => `${STREAM_PREFIX}FLEET_${t}`,
  /** Policy versions: immutable, one message per version. */
  policy: (t: TenantId) => `${STREAM_PREFIX}POLICY_${t}`,
  /** Schedules, their firing state and webhook routes: configuration with its history. */
  triggers: (t: TenantId) => `${STREAM_PREFIX}TRIGGERS_${t}`,
  /** Webhook ids ingress accepted, kept for the replay window (max age). */
  seen: (t: TenantId) => `${STREAM_PREFIX}SEEN_${t}`,
  /** The data-sync catalog: one subject per entity, its last message is the entity's state. */
  catalog: (t: TenantId) => `${STREAM_PREFIX}CATALOG_${t}`,
  /** Orchestrator partition leases, members and the partition count: a key-value bucket in all but name. */
  leases: (t: TenantId) => `${STREAM_PREFIX}LEASES_${t}`,
  /** The prefix of command streams, used to discover tenants. */
  commandsPrefix: `${STREAM_PREFIX}CMDS_`,
} as const;

export const Consumers = {
  /** The orchestrators' shared durable consumer on a tenant's command stream. */
  orchestrator: 'orchestrator',
  /** The projectors' shared durable consumer on a tenant's run stream. */
  projector: 'projector',
  /** The lease services' shared durable consumer on a tenant's run stream (revokes leases of ended runs). */
  secretsLease: 'secrets-lease',
  /** The workers' shared durable consumer for one pool. */
  workPool: (pool: string) => `work-${parseToken('pool', pool)}`,
} as const;

/** Headers. `Nats-*` belong to NATS; ours are `Capstan-*`. */
export const Headers = {
  MsgId: 'Nats-Msg-Id',
  ExpectedLastSubjectSeq: 'Nats-Expected-Last-Subject-Sequence',
  /** A message's own time to live (streams with `allow_msg_ttl`). */
  Ttl: 'Nats-TTL',
  BatchId: 'Nats-Batch-Id',
  BatchSeq: 'Nats-Batch-Sequence',
  BatchCommit: 'Nats-Batch-Commit',
  Schedule: 'Nats-Schedule',
  ScheduleTarget: 'Nats-Schedule-Target',
  TraceParent: 'traceparent',
  EventType: 'Capstan-Type',
  Schema: 'Capstan-Schema',
  ErrorCode: 'Capstan-Error-Code',
  Error: 'Capstan-Error',
  Tenant: 'Capstan-Tenant',
  RunId: 'Capstan-Run-Id',
  SourceSubject: 'Capstan-Source-Subject',
  SourceSeq: 'Capstan-Source-Seq',
  /** The author's NATS user JWT (public): who signed, issued by which account, with which tags. */
  Signer: 'Capstan-Signer',
  /** Ed25519 signature (base64url) by the signer's key over the subject and the body's digest. */
  Signature: 'Capstan-Signature',
  /** A command handed to its partition's owner: the consumer's acknowledgement subject. */
  AckSubject: 'Capstan-Ack-Subject',
} as const;

/**
 * The JetStream API and acknowledgement subjects a role may be allowed, by stream and
 * consumer. Exact subjects only: the permissions in `permissions.ts` never allow a role
 * outside its own streams and consumers (no `$JS.API.>`, which in older servers even let a
 * user purge other accounts' data).
 */
export const JsApi = {
  /** The same API subject in a JetStream domain (`$JS.<domain>.API.…`), as a leaf node's clients address it. */
  inDomain: (subject: string, domain: string) => subject.replace(/^\$JS\.API\./, `$JS.${domain}.API.`),
  /** Account info: usage against the account's quotas. */
  info: '$JS.API.INFO',
  streamInfo: (stream: string) => `$JS.API.STREAM.INFO.${stream}`,
  /** Batch and by-sequence direct gets (request body names what). */
  directGet: (stream: string) => `$JS.API.DIRECT.GET.${stream}`,
  /** Last message by subject: the subject follows the stream name. */
  directGetLast: (stream: string) => `$JS.API.DIRECT.GET.${stream}.>`,
  consumerInfo: (stream: string, consumer: string) => `$JS.API.CONSUMER.INFO.${stream}.${consumer}`,
  consumerNext: (stream: string, consumer: string) => `$JS.API.CONSUMER.MSG.NEXT.${stream}.${consumer}`,
  /** Moves a durable consumer back to a sequence (nats-server >= 2.14). */
  consumerReset: (stream: string, consumer: string) => `$JS.API.CONSUMER.RESET.${stream}.${consumer}`,
  /** Acknowledgements of one consumer's deliveries. */
  ack: (stream: string, consumer: string) => `$JS.ACK.${stream}.${consumer}.>`,
  /** Everything (the platform admin only). */
  all: '$JS.API.>',
} as const;

/** The platform account: what lives outside every tenant's account. */
export const Platform = {
  /** The tenant registry: one subject per tenant, its last message is the tenant's record. */
  tenantsStream: 'CAPSTAN_TENANTS',
  tenantRecord: (t: TenantId) => `capstan.tenants.${t}`,
  allTenantRecords: 'capstan.tenants.*',
  /** The platform account's name in operator JWTs. */
  accountName: 'CAPSTAN',
  /** The system account's name. */
  systemAccountName: 'SYS',
  /** Requests the server answers for the system account: pushing an account JWT. */
  claimsUpdate: '$SYS.REQ.CLAIMS.UPDATE',
  /** Every server answers with its JetStream state, name and tags: the cluster's shape. */
  serverPingJsz: '$SYS.REQ.SERVER.PING.JSZ',
  /**
   * The platform's JetStream domain, set on servers that accept tenants' leaf nodes: across a
   * leaf connection only the domain's API (`$JS.capstan.API.…`) reaches the platform's streams.
   */
  jsDomain: 'capstan',
} as const;

/** Message ids (for `Nats-Msg-Id`) are deterministic, so a retried publish is deduplicated. */
export const MsgIds = {
  event: (runId: RunId, seq: number) => `${runId}:${seq}`,
  work: (runId: RunId, step: string, attempt: number) => `work:${runId}:${step}:${attempt}`,
  timer: (runId: RunId, timerId: string) => `timer:${runId}:${timerId}`,
  command: (verb: CommandVerb, key: string) => `${verb}:${key}`,
  /** The submit that starts a child (or a continued) run: one per derived run id. */
  startRun: (runId: RunId) => `start:${runId}`,
  /** A child run's outcome for its parent: one per ending event of the child. */
  childOutcome: (child: RunId, seq: number) => `child:${child}:${seq}`,
  /** The cancel of a child run by its parent's ending. */
  childCancel: (child: RunId) => `child-cancel:${child}`,
  /** A policy version: a retried store of the same text as the same version is a duplicate. */
  policyVersion: (version: number, sha256: string) => `policy:${version}:${sha256}`,
  /** A catalog record: a retried publish of the same version is a duplicate. */
  catalogRecord: (kind: string, id: string, version: number) => `catalog:${kind}:${id}:${version}`,
} as const;
