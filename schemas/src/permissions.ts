/**
 * Who may do what on the bus, derived from the same names as the subjects (`names.ts`), so
 * a permission cannot drift from the subject it guards.
 *
 * Every tenant is its own NATS account; a role is a user in that account whose JWT carries
 * the lists below. The server enforces them: a publish, subscription or JetStream API call
 * outside a role's list is refused by nats-server before any Capstan code sees it. Lists
 * are allow-lists of exact subjects (a wildcard only where a token is data, such as a run
 * id); nothing but the platform admin holds `>` or `$JS.API.>`, and no role but the admin
 * may create, update or delete a stream or a consumer (a consumer's deliver subject would
 * let its creator publish stream content onto any subject).
 *
 * Replies: a service answers a request on the requester's inbox through the server's
 * response permission (`resp`), valid only for requests it received. Nobody may publish
 * on another user's inbox, so an answer cannot be forged by a third party.
 */
import { CommandVerb, Consumers, DatasyncVerb, DeadLetterSource, JsApi, Platform, PolicyVerb, SecretsVerb, Streams, Subjects, TriggerVerb, parseToken } from './names.js';
import { InvalidArgumentError } from './errors.js';
import type { TenantId } from './ids.js';

/** Every role Capstan issues credentials for. */
export const Role = {
  /** A tenant's application: submit, cancel, signal; read its own runs and dead letters. */
  Client: 'client',
  /** A tenant's operator: what a client may, plus approve, deny, retry, fleet and policy/secrets administration. */
  Operator: 'operator',
  /** A tenant's worker deployment: pull its pools, report started/result, ask for sandboxes and leases. */
  Worker: 'worker',
  Orchestrator: 'orchestrator',
  Policy: 'policy',
  SecretsLease: 'secrets-lease',
  Sandbox: 'sandbox',
  Projector: 'projector',
  Console: 'console',
  /** Signed webhooks in: checks each delivery (through the secrets-lease service) and submits. */
  Ingress: 'ingress',
  /** The data plane's connector runtime for data-sync pipelines. */
  Datasync: 'datasync',
  /** The platform admin: provisioning only (streams, consumers, registry). Never a running service. */
  Admin: 'admin',
  /**
   * A tenant's own nats-server dialling out to the platform as a leaf node: what may cross is
   * what its local workers may do, and replies only to their inboxes.
   */
  Leaf: 'leaf',
} as const;
export type Role = (typeof Role)[keyof typeof Role];

/** Roles issued per tenant to people and a tenant's own deployments (`capstan creds issue`). */
export const TENANT_ROLES = [Role.Client, Role.Operator, Role.Worker] as const;
export type TenantRole = (typeof TENANT_ROLES)[number];

/** Platform services: one identity each, with a user in every tenant account (kept in the registry). */
export const SERVICE_ROLES = [Role.Orchestrator, Role.Policy, Role.SecretsLease, Role.Sandbox, Role.Projector, Role.Console, Role.Ingress, Role.Datasync] as const;
export type ServiceRole = (typeof SERVICE_ROLES)[number];

export function isServiceRole(r: string): r is ServiceRole {
  return (SERVICE_ROLES as readonly string[]).includes(r);
}

export function isTenantRole(r: string): r is TenantRole {
  return (TENANT_ROLES as readonly string[]).includes(r);
}

/** What a user may publish and subscribe to, as nats-server's user permissions. */
export interface RolePermissions {
  readonly pub: readonly string[];
  readonly sub: readonly string[];
  /** Replies on the reply subjects of requests received: how many, for how long (ms; -1 no limit). */
  readonly resp?: { readonly max: number; readonly ttlMs: number };
}

/** A worker's scope: the pools it pulls and the id it is admitted under. */
export interface RoleScope {
  readonly pools?: readonly string[];
  readonly workerId?: string;
  /** A leaf node's local users (public keys) whose replies may cross it to their inboxes. */
  readonly localUsers?: readonly string[];
}

/**
 * A user's private inbox prefix, derived from its public key: replies to its requests come
 * there, and only it may subscribe to them.
 */
export function inboxPrefixFor(userPublicKey: string): string {
  if (!/^U[A-Z2-7]{55}$/.test(userPublicKey)) throw new InvalidArgumentError('a user public key is 56 base32 characters starting with U');
  return `_INBOX.${userPublicKey}`;
}

/** How long a service may keep answering one request: a sandboxed step beats until it ends. */
const LONG_REPLIES = { max: -1, ttlMs: 24 * 60 * 60 * 1000 } as const;
const ONE_REPLY = { max: 1, ttlMs: 60_000 } as const;

/** Read access to a stream: its info and direct gets (by sequence, batch, or last by subject). */
const readStream = (stream: string) => [JsApi.streamInfo(stream), JsApi.directGet(stream), JsApi.directGetLast(stream)];
/** Use of an existing durable pull consumer: info, pull, acknowledge. */
const useConsumer = (stream: string, consumer: string) => [JsApi.consumerInfo(stream, consumer), JsApi.consumerNext(stream, consumer), JsApi.ack(stream, consumer)];

function clientPub(t: TenantId): string[] {
  return [
    JsApi.info,
    Subjects.command(t, CommandVerb.Submit),
    Subjects.command(t, CommandVerb.Cancel),
    Subjects.command(t, CommandVerb.Signal),
    ...readStream(Streams.runs(t)),
    ...readStream(Streams.deadLetters(t)),
  ];
}

function operatorPub(t: TenantId): string[] {
  return [
    ...clientPub(t),
    Subjects.command(t, CommandVerb.Approve),
    Subjects.command(t, CommandVerb.Deny),
    Subjects.command(t, CommandVerb.Retry),
    Subjects.allFleet(t),
    ...readStream(Streams.fleet(t)),
    ...readStream(Streams.policy(t)),
    // Decide: an operator asks again under a recorded version (capstan replay --recheck-policy).
    ...[PolicyVerb.Decide, PolicyVerb.Set, PolicyVerb.Get, PolicyVerb.History, PolicyVerb.Test].map((v) => Subjects.policy(t, v)),
    ...[SecretsVerb.Key, SecretsVerb.Put, SecretsVerb.List, SecretsVerb.Rotate, SecretsVerb.Delete].map((v) => Subjects.secrets(t, v)),
    // Schedules (judged by the orchestrator), webhook routes (records), the workflow catalog.
    Subjects.triggerCommand(t, TriggerVerb.Schedule),
    Subjects.allRoutes(t),
    Subjects.workflowCatalog(t),
    ...readStream(Streams.triggers(t)),
    // The data-sync catalog's administration, and the bounded preview.
    ...[DatasyncVerb.Put, DatasyncVerb.Delete, DatasyncVerb.Get, DatasyncVerb.List, DatasyncVerb.Preview].map((v) => Subjects.datasync(t, v)),
  ];
}

/**
 * The permissions of `role` in tenant `t`'s account.
 * @throws InvalidArgumentError for a worker without pools, or the admin (who has no list)
 */
export function permissionsFor(role: Role, t: TenantId, inboxPrefix: string, scope: RoleScope = {}): RolePermissions {
  const inbox = `${inboxPrefix}.>`;
  switch (role) {
    case Role.Client:
      // Live progress of its runs (`cap.<t>.runs.<runId>`) besides reading them back.
      return { pub: clientPub(t), sub: [inbox, Subjects.allRuns(t)] };
    case Role.Operator:
      return { pub: operatorPub(t), sub: [inbox, Subjects.allRuns(t), Subjects.allFleet(t)] };
    case Role.Console:
      // The console acts for its signed-in operators; it reads the projections for queries.
      return { pub: operatorPub(t), sub: [inbox, Subjects.allRuns(t), Subjects.allFleet(t)] };
    case Role.Worker: {
      const pools = (scope.pools ?? []).map((p) => parseToken('pool', p));
      if (pools.length === 0) throw new InvalidArgumentError('a worker credential names at least one pool');
      const workerId = scope.workerId === undefined ? undefined : parseToken('worker id', scope.workerId);
      // Every JetStream API subject also in the platform's domain: a worker behind a tenant's
      // leaf node reaches the streams only that way (the server maps it to the same API).
      const api = (subjects: string[]) => subjects.flatMap((x) => (x.startsWith('$JS.API.') ? [x, JsApi.inDomain(x, Platform.jsDomain)] : [x]));
      return {
        pub: api([
          JsApi.info,
          Subjects.command(t, CommandVerb.Started),
          Subjects.command(t, CommandVerb.Result),
          Subjects.command(t, CommandVerb.Credential),
          Subjects.deadLetter(t, DeadLetterSource.Work),
          Subjects.sandboxExec(t),
          // A cancelled sandboxed attempt: the worker asks the sandbox service to kill it.
          Subjects.sandboxCancel(t),
          // The built-in pipeline handlers ask the datasync service to run a step, and to stop it.
          Subjects.datasync(t, DatasyncVerb.Step),
          Subjects.datasync(t, DatasyncVerb.Cancel),
          Subjects.secrets(t, SecretsVerb.Lease),
          Subjects.policy(t, PolicyVerb.Decide),
          Subjects.workerHeartbeat(t),
          ...readStream(Streams.runs(t)),
          ...readStream(Streams.fleet(t)),
          ...pools.flatMap((p) => useConsumer(Streams.work(t), Consumers.workPool(p))),
        ]),
        // Cancels of attempts their runs no longer want (from the orchestrator).
        sub: [inbox, Subjects.allJitRoutes(t), Subjects.stepCancel(t), workerId === undefined ? Subjects.allFleet(t) : Subjects.fleet(t, workerId)],
        // Answers to the sandbox service's mode-3b credential requests.
        resp: ONE_REPLY,
      };
    }
    case Role.Leaf: {
      // What its local workers may publish crosses; what they may receive comes back, their
      // inboxes only (named one by one: another user's replies never reach the tenant's server).
      const local = scope.localUsers ?? [];
      if (local.length === 0) throw new InvalidArgumentError('a leaf credential names at least one local user whose replies it carries');
      const worker = permissionsFor(Role.Worker, t, inboxPrefix, { pools: scope.pools ?? [] });
      return { ...worker, sub: [...local.map((k) => `${inboxPrefixFor(k)}.>`), ...worker.sub.filter((x) => x !== inbox)] };
    }
    case Role.Orchestrator:
      return {
        pub: [
          JsApi.info,
          Subjects.allRuns(t),
          Subjects.allIdempotency(t),
          Subjects.allWork(t),
          Subjects.allTimers(t),
          Subjects.command(t, CommandVerb.Policy),
          // Child runs: their outcome for the parent, and their cancel when the parent ends first.
          Subjects.command(t, CommandVerb.Child),
          Subjects.command(t, CommandVerb.Cancel),
          Subjects.deadLetter(t, DeadLetterSource.Command),
          // Tells the tenant's workers which attempts are cancelled (step.cancelled).
          Subjects.stepCancel(t),
          Subjects.policy(t, PolicyVerb.Decide),
          ...readStream(Streams.runs(t)),
          JsApi.streamInfo(Streams.commands(t)),
          ...useConsumer(Streams.commands(t), Consumers.orchestrator),
          // Schedules: their records and state, and the runs their slots start.
          Subjects.command(t, CommandVerb.Submit),
          Subjects.allSchedules(t),
          Subjects.allScheduleStates(t),
          ...readStream(Streams.triggers(t)),
          // Partition ownership: leases and presence (never the partition count, the admin's),
          // and commands handed to the owner of their run's partition.
          Subjects.allPartitionLeases(t),
          Subjects.allOrchestratorMembers(t),
          ...readStream(Streams.leases(t)),
          Subjects.allOrchestratorInboxes(t),
        ],
        sub: [inbox, Subjects.workflowCatalog(t), Subjects.allOrchestratorInboxes(t)],
        // Answers to the workflow catalog.
        resp: ONE_REPLY,
      };
    case Role.Policy:
      return {
        pub: [JsApi.info, Subjects.policyVersions(t), ...readStream(Streams.policy(t))],
        sub: [inbox, Subjects.svcVerbs(t, 'policy'), Subjects.policyVersions(t)],
        resp: ONE_REPLY,
      };
    case Role.SecretsLease:
      return {
        // The catalog: a connection's key names warrant the datasync service's leases.
        pub: [JsApi.info, ...readStream(Streams.runs(t)), ...readStream(Streams.catalog(t)), ...useConsumer(Streams.runs(t), Consumers.secretsLease)],
        sub: [inbox, Subjects.svcVerbs(t, 'secrets')],
        resp: ONE_REPLY,
      };
    case Role.Sandbox:
      return {
        pub: [JsApi.info, Subjects.secrets(t, SecretsVerb.Claim), Subjects.secrets(t, SecretsVerb.Redeem), Subjects.allJitRoutes(t), ...readStream(Streams.runs(t))],
        sub: [inbox, Subjects.sandboxExec(t), Subjects.sandboxCancel(t)],
        // accepted, a beat every second, done: for as long as the step runs.
        resp: LONG_REPLIES,
      };
    case Role.Projector:
      return {
        pub: [
          JsApi.info,
          ...readStream(Streams.runs(t)),
          ...readStream(Streams.fleet(t)),
          ...readStream(Streams.policy(t)),
          ...readStream(Streams.deadLetters(t)),
          ...readStream(Streams.triggers(t)),
          ...readStream(Streams.catalog(t)),
          ...useConsumer(Streams.runs(t), Consumers.projector),
          JsApi.consumerReset(Streams.runs(t), Consumers.projector),
        ],
        sub: [inbox, Subjects.workerHeartbeat(t), Subjects.allFleet(t), Subjects.policyVersions(t), Subjects.allSchedules(t), Subjects.allRoutes(t), Subjects.allCatalog(t)],
      };
    case Role.Ingress:
      return {
        pub: [
          JsApi.info,
          Subjects.command(t, CommandVerb.Submit),
          Subjects.allSeen(t),
          Subjects.secrets(t, SecretsVerb.Verify),
          ...readStream(Streams.seen(t)),
          ...readStream(Streams.triggers(t)),
        ],
        sub: [inbox, Subjects.allRoutes(t)],
      };
    case Role.Datasync:
      return {
        pub: [
          JsApi.info,
          // Catalog records (stored; the publish is acknowledged on its inbox), and reading them back.
          Subjects.allCatalog(t),
          ...readStream(Streams.catalog(t)),
          // Whether a pipeline's holder run has ended.
          ...readStream(Streams.runs(t)),
          // The connection's credentials, leased and redeemed for one step or preview: the second redeemer after the sandbox service.
          Subjects.secrets(t, SecretsVerb.Lease),
          Subjects.secrets(t, SecretsVerb.Redeem),
        ],
        sub: [inbox, Subjects.svcVerbs(t, 'datasync')],
        // accepted, a beat every second, done: for as long as a pipeline step runs.
        resp: LONG_REPLIES,
      };
    case Role.Admin:
      throw new InvalidArgumentError('the platform admin has no permission list: it holds its account whole');
  }
}

/** A platform service's permissions in the platform account: read the tenant registry. */
export function platformPermissions(inboxPrefix: string): RolePermissions {
  return {
    pub: [JsApi.info, JsApi.streamInfo(Platform.tenantsStream), JsApi.directGet(Platform.tenantsStream), JsApi.directGetLast(Platform.tenantsStream)],
    sub: [`${inboxPrefix}.>`, Platform.allTenantRecords],
  };
}
