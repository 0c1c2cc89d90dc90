/**
 * A tenant's streams and durable consumers, from the one set of settings below. Only the
 * platform admin creates or changes them (`ensureTenant`, idempotent): services and workers
 * may use their consumers but never create one, because a consumer's deliver subject would
 * let its creator publish stream content onto any subject of the account.
 */
import type { ConsumerConfig, JetStreamManager, StreamConfig } from '@nats-io/jetstream';
import { AckPolicy, DeliverPolicy, JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import {
  Consumers,
  decode,
  DEFAULT_PARTITIONS,
  DEFAULT_TENANT_PLACEMENT,
  encode,
  InvalidArgumentError,
  LIMITS,
  MAX_PARTITIONS,
  MAX_RUN_EVENTS,
  parseToken,
  Streams,
  Subjects,
  type TenantId,
  type TenantPlacement,
} from '@capstan/schemas';

const SECOND_NS = 1_000_000_000;

export interface TenantLimits {
  /** Events one run may hold; more are refused, never silently dropped. */
  readonly maxEventsPerRun: number;
  /** How long a work item's or timer's id is remembered: longer than any step's timeout. */
  readonly workDedupSeconds: number;
  /** How long dead letters are kept. */
  readonly deadLetterDays: number;
  /** Bytes the dead letters may take: a flood of bad commands cannot use the tenant's storage. */
  readonly deadLetterBytes: number;
}

export const DEFAULT_TENANT_LIMITS: TenantLimits = { maxEventsPerRun: MAX_RUN_EVENTS, workDedupSeconds: 3600, deadLetterDays: 14, deadLetterBytes: 64 * 1024 * 1024 };

/**
 * The durable consumers' settings, made at provisioning. The services read them back from
 * the server (`consumers.info`) rather than configuring them.
 */
export interface ConsumerSettings {
  /** A command not acknowledged for this long is redelivered to another orchestrator. */
  readonly orchestratorAckWaitMs: number;
  readonly orchestratorMaxAckPending: number;
  readonly projectorAckWaitMs: number;
  readonly projectorMaxAckPending: number;
  readonly secretsLeaseAckWaitMs: number;
  /** A work item whose worker stopped heartbeating for this long is handed to another (and reported lost). */
  readonly workAckWaitMs: number;
  readonly workMaxAckPending: number;
}

export const DEFAULT_CONSUMER_SETTINGS: ConsumerSettings = Object.freeze({
  orchestratorAckWaitMs: 10_000,
  orchestratorMaxAckPending: 2048,
  projectorAckWaitMs: 10_000,
  projectorMaxAckPending: 1024,
  secretsLeaseAckWaitMs: 30_000,
  workAckWaitMs: 30_000,
  workMaxAckPending: 256,
});

/** Deliveries of a work item after the first are reported lost; after this many the step's timer decides. */
export const WORK_MAX_DELIVER = 5;

const MS = 1_000_000;

type Durable = Partial<ConsumerConfig> & { durable_name: string };

/** The run pipeline's durable consumers: one per service, and one per worker pool. */
export function consumerConfigs(t: TenantId, pools: readonly string[], c: ConsumerSettings = DEFAULT_CONSUMER_SETTINGS): { stream: string; config: Durable }[] {
  return [
    {
      stream: Streams.commands(t),
      config: {
        durable_name: Consumers.orchestrator,
        filter_subject: Subjects.allCommands(t),
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        ack_wait: c.orchestratorAckWaitMs * MS,
        max_ack_pending: c.orchestratorMaxAckPending,
      },
    },
    {
      stream: Streams.runs(t),
      config: {
        durable_name: Consumers.projector,
        filter_subject: Subjects.allRuns(t),
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        ack_wait: c.projectorAckWaitMs * MS,
        max_ack_pending: c.projectorMaxAckPending,
      },
    },
    {
      stream: Streams.runs(t),
      config: {
        durable_name: Consumers.secretsLease,
        filter_subject: Subjects.allRuns(t),
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        ack_wait: c.secretsLeaseAckWaitMs * MS,
        max_ack_pending: 1000,
      },
    },
    ...pools.map((p) => ({ stream: Streams.work(t), config: poolConsumerConfig(t, p, c) })),
  ];
}

export function poolConsumerConfig(t: TenantId, pool: string, c: ConsumerSettings = DEFAULT_CONSUMER_SETTINGS): Durable {
  return {
    durable_name: Consumers.workPool(parseToken('pool', pool)),
    filter_subject: Subjects.work(t, pool),
    ack_policy: AckPolicy.Explicit,
    ack_wait: c.workAckWaitMs * MS,
    max_deliver: WORK_MAX_DELIVER,
    max_ack_pending: c.workMaxAckPending,
  };
}

/**
 * Creates the durable consumers; with `update` (the default), an existing one takes the
 * settings that may change (ack wait, pending). Idempotent.
 */
export async function ensureConsumers(jsm: JetStreamManager, consumers: readonly { stream: string; config: Durable }[], o: { update?: boolean } = {}): Promise<void> {
  for (const { stream, config } of consumers) {
    try {
      await jsm.consumers.info(stream, config.durable_name);
      if (o.update !== false) await jsm.consumers.update(stream, config.durable_name, { ack_wait: config.ack_wait, max_ack_pending: config.max_ack_pending });
    } catch (e) {
      if (e instanceof JetStreamApiError && e.code === JetStreamApiCodes.ConsumerNotFound) await jsm.consumers.add(stream, config);
      else throw e;
    }
  }
}

export function streamConfigs(t: TenantId, limits: TenantLimits = DEFAULT_TENANT_LIMITS): (Partial<StreamConfig> & { name: string })[] {
  return [
    {
      // The truth. Nothing is ever deleted or purged; a run that outgrows its cap is refused.
      name: Streams.runs(t),
      subjects: [Subjects.allRuns(t), Subjects.allIdempotency(t)],
      storage: 'file' as StreamConfig['storage'],
      retention: 'limits' as StreamConfig['retention'],
      discard: 'new' as StreamConfig['discard'],
      discard_new_per_subject: true,
      max_msgs_per_subject: limits.maxEventsPerRun,
      max_msg_size: LIMITS.messageBytes,
      duplicate_window: 120 * SECOND_NS,
      deny_delete: true,
      deny_purge: true,
      allow_direct: true,
      allow_atomic: true,
    },
    {
      name: Streams.commands(t),
      subjects: [Subjects.allCommands(t), Subjects.allTimers(t)],
      storage: 'file' as StreamConfig['storage'],
      retention: 'workqueue' as StreamConfig['retention'],
      max_msg_size: 1024 * 1024,
      duplicate_window: limits.workDedupSeconds * SECOND_NS,
      allow_msg_schedules: true,
      allow_atomic: true,
    },
    {
      name: Streams.work(t),
      subjects: [Subjects.allWork(t)],
      storage: 'file' as StreamConfig['storage'],
      retention: 'workqueue' as StreamConfig['retention'],
      max_msg_size: LIMITS.messageBytes,
      duplicate_window: limits.workDedupSeconds * SECOND_NS,
      allow_atomic: true,
    },
    {
      name: Streams.deadLetters(t),
      subjects: [Subjects.allDeadLetters(t)],
      storage: 'file' as StreamConfig['storage'],
      retention: 'limits' as StreamConfig['retention'],
      max_age: limits.deadLetterDays * 86_400 * SECOND_NS,
      max_msg_size: 1024 * 1024 + 64 * 1024,
      // Refused commands cannot grow past this: the oldest dead letters go first.
      max_bytes: limits.deadLetterBytes,
      discard: 'old' as StreamConfig['discard'],
      allow_direct: true,
    },
  ];
}

/** Admission records kept per worker id: its history, for a person reading the stream. */
const ADMISSION_HISTORY = 64;

/**
 * The tenant's worker admission stream, a key-value bucket in all but name: one subject per
 * worker id (`cap.<t>.fleet.<workerId>`) whose last message is the worker's state. Apart
 * from {@link streamConfigs} (the run pipeline's streams) because nothing in the run path
 * reads it: workers watch their own subject, the projector folds it into
 * `worker_admissions` and the audit log. Kept in the `cap.<t>.` namespace (not a `KV_`
 * bucket) so the one permission `cap.<t>.>` still fences the tenant.
 */
export function fleetStreamConfig(t: TenantId): Partial<StreamConfig> & { name: string } {
  return keyedStreamConfig(Streams.fleet(t), Subjects.allFleet(t), ADMISSION_HISTORY, 4096);
}

/**
 * A stream used as a key-value bucket in all but name: one subject per key, whose last
 * message is the key's state, `history` messages kept per key, and nothing deletable (a
 * revocation or a change must not be undone by deleting its record).
 */
function keyedStreamConfig(
  name: string,
  subjects: string | readonly string[],
  history: number,
  maxMsgSize: number,
  opts: { duplicateWindowNs?: number } = {},
): Partial<StreamConfig> & { name: string } {
  return {
    name,
    subjects: typeof subjects === 'string' ? [subjects] : [...subjects],
    storage: 'file' as StreamConfig['storage'],
    retention: 'limits' as StreamConfig['retention'],
    discard: 'old' as StreamConfig['discard'],
    max_msgs_per_subject: history,
    max_msg_size: maxMsgSize,
    ...(opts.duplicateWindowNs ? { duplicate_window: opts.duplicateWindowNs } : {}),
    deny_delete: true,
    deny_purge: true,
    allow_direct: true,
  };
}

/**
 * The tenant's policy versions (`cap.<t>.policy.versions`): version N is the Nth message, so
 * nothing may ever be deleted or purged, and a change is audited by being stored. The policy
 * service appends with the expected last sequence, so two racing changes cannot both become
 * version N.
 */
export function policyStreamConfig(t: TenantId): Partial<StreamConfig> & { name: string } {
  return {
    name: Streams.policy(t),
    subjects: [Subjects.policyVersions(t)],
    storage: 'file' as StreamConfig['storage'],
    retention: 'limits' as StreamConfig['retention'],
    discard: 'new' as StreamConfig['discard'],
    max_msg_size: LIMITS.messageBytes,
    duplicate_window: 120 * SECOND_NS,
    deny_delete: true,
    deny_purge: true,
    allow_direct: true,
  };
}

/** Records kept per schedule, schedule state and route subject: their recent history. */
const TRIGGER_HISTORY = 64;

/**
 * The tenant's schedules, their firing state and its webhook routes
 * (`cap.<t>.{schedules,schedstate,routes}.<id>`): key-value buckets in all but name, one
 * subject per id whose last message is the current value, kept in the `cap.<t>.` namespace
 * so `cap.<t>.>` fences them with the rest of the tenant. Nothing may be deleted or purged:
 * the records are the audit trail of every change.
 */
export function triggersStreamConfig(t: TenantId): Partial<StreamConfig> & { name: string } {
  return keyedStreamConfig(Streams.triggers(t), [Subjects.allSchedules(t), Subjects.allScheduleStates(t), Subjects.allRoutes(t)], TRIGGER_HISTORY, LIMITS.messageBytes);
}

/**
 * How long ingress remembers an accepted `webhook-id`: at least twice its largest timestamp
 * tolerance (300 s), since a delivery signed at t is accepted until t + tolerance by a clock
 * up to the tolerance behind. A retry after that names the same run, which starts nothing.
 */
export const SEEN_WINDOW_SECONDS = 900;

/** Webhook ids ingress accepted (`cap.<t>.seen.<hash>`): write-once per subject, expiring. */
export function seenStreamConfig(t: TenantId): Partial<StreamConfig> & { name: string } {
  return {
    name: Streams.seen(t),
    subjects: [Subjects.allSeen(t)],
    storage: 'file' as StreamConfig['storage'],
    retention: 'limits' as StreamConfig['retention'],
    discard: 'old' as StreamConfig['discard'],
    max_age: SEEN_WINDOW_SECONDS * SECOND_NS,
    max_msgs_per_subject: 1,
    max_msg_size: 4096,
    allow_direct: true,
  };
}

/** Records kept per catalog entity: its history of changes, for a person reading the stream. */
const CATALOG_HISTORY = 64;

/**
 * The tenant's data-sync catalog (`cap.<t>.catalog.<kind>.<id>`): one subject per
 * connection, model or destination, whose last record is its state (identifiers and safe
 * metadata; specs stay in the data plane). The datasync service appends with the subject's
 * expected last sequence; the projector folds it into `datasync_entities` and the audit log.
 * Nothing may be deleted: the records are the audit trail.
 */
export function catalogStreamConfig(t: TenantId): Partial<StreamConfig> & { name: string } {
  return keyedStreamConfig(Streams.catalog(t), Subjects.allCatalog(t), CATALOG_HISTORY, 8192, { duplicateWindowNs: 120 * SECOND_NS });
}

/**
 * The orchestrators' partition table (`cap.<t>.orch.{partitions,lease.<p>,member.<id>}`): a
 * key-value bucket in all but name (last record per key, compare-and-set by expected last
 * subject sequence), kept in the `cap.<t>.` namespace so `cap.<t>.>` fences it. A lease's
 * revision (its stream sequence) is its epoch. Members' records carry a TTL, so a departed
 * instance's presence disappears by itself.
 */
export function leasesStreamConfig(t: TenantId): Partial<StreamConfig> & { name: string } {
  return {
    name: Streams.leases(t),
    subjects: [Subjects.partitionCount(t), Subjects.allPartitionLeases(t), Subjects.allOrchestratorMembers(t)],
    storage: 'file' as StreamConfig['storage'],
    retention: 'limits' as StreamConfig['retention'],
    discard: 'old' as StreamConfig['discard'],
    max_msgs_per_subject: 1,
    max_msg_size: 1024,
    allow_direct: true,
    allow_msg_ttl: true,
  };
}

/** Every stream the platform makes in a tenant's account, before placement. */
export function tenantStreamConfigs(t: TenantId, limits?: TenantLimits): (Partial<StreamConfig> & { name: string })[] {
  return [...streamConfigs(t, limits), fleetStreamConfig(t), policyStreamConfig(t), triggersStreamConfig(t), seenStreamConfig(t), catalogStreamConfig(t), leasesStreamConfig(t)];
}

/**
 * A stream's configuration with the tenant's placement: its replica count and the server tags
 * its servers must carry. Consumers take the stream's replica count (theirs is left at 0).
 */
export function placed(cfg: Partial<StreamConfig> & { name: string }, p: TenantPlacement = DEFAULT_TENANT_PLACEMENT): Partial<StreamConfig> & { name: string } {
  return { ...cfg, num_replicas: p.replicas, ...(p.tags.length ? { placement: { tags: [...p.tags] } } : {}) } as Partial<StreamConfig> & { name: string };
}

/** Creates the tenant's streams, or brings their settings (and placement) up to date. Idempotent. */
export async function ensureStreams(jsm: JetStreamManager, t: TenantId, limits?: TenantLimits, placement?: TenantPlacement): Promise<void> {
  for (const cfg of tenantStreamConfigs(t, limits).map((c) => placed(c, placement))) {
    try {
      await jsm.streams.info(cfg.name);
      await jsm.streams.update(cfg.name, cfg);
    } catch (e) {
      if (e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamNotFound) {
        await jsm.streams.add(cfg);
      } else {
        throw e;
      }
    }
  }
}

/** A tenant's streams and consumers (the admin's connection to its account). Idempotent. */
export async function ensureTenant(
  jsm: JetStreamManager,
  t: TenantId,
  o: { limits?: TenantLimits; pools?: readonly string[]; consumers?: Partial<ConsumerSettings>; partitions?: number; placement?: TenantPlacement } = {},
): Promise<void> {
  await ensureStreams(jsm, t, o.limits, o.placement);
  await ensurePartitionCount(jsm, t, o.partitions ?? DEFAULT_PARTITIONS);
  await ensureConsumers(jsm, consumerConfigs(t, o.pools ?? ['default'], { ...DEFAULT_CONSUMER_SETTINGS, ...o.consumers }));
}

/**
 * Records how many partitions the tenant's runs are hashed to, once: a run's partition must
 * never change, so a later provisioning with another count keeps the first (and says so).
 * @returns the tenant's partition count
 */
export async function ensurePartitionCount(jsm: JetStreamManager, t: TenantId, partitions: number): Promise<number> {
  if (!Number.isInteger(partitions) || partitions < 1 || partitions > MAX_PARTITIONS)
    throw new InvalidArgumentError(`partitions must be an integer in 1..${MAX_PARTITIONS}, got ${partitions}`);
  const subject = Subjects.partitionCount(t);
  const existing = await jsm.direct.getMessage(Streams.leases(t), { last_by_subj: subject }).catch(() => null);
  if (existing) return parsePartitionCount(existing.data);
  try {
    await jsm.jetstream().publish(subject, encode({ partitions }), { expect: { lastSubjectSequence: 0 } });
    return partitions;
  } catch (e) {
    // Another admin wrote it first: theirs stands.
    const again = await jsm.direct.getMessage(Streams.leases(t), { last_by_subj: subject });
    if (!again) throw e;
    return parsePartitionCount(again.data);
  }
}

export function parsePartitionCount(data: Uint8Array): number {
  const n = (decode(data) as { partitions?: unknown }).partitions;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_PARTITIONS)
    throw new InvalidArgumentError(`the recorded partition count is not an integer in 1..${MAX_PARTITIONS}`);
  return n;
}
