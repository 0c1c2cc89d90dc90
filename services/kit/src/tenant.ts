/**
 * Provisioning: a tenant exists when its streams exist. `ensureTenant` creates or updates
 * them idempotently, from the one set of stream settings below.
 */
import type { JetStreamManager, StreamConfig } from '@nats-io/jetstream';
import { JetStreamApiError } from '@nats-io/jetstream';
import { Streams, Subjects, isTenantId, LIMITS, type TenantId } from '@capstan/schemas';

const SECOND_NS = 1_000_000_000;

export interface TenantLimits {
  /** Events one run may hold; more are refused, never silently dropped. */
  readonly maxEventsPerRun: number;
  /** How long a work item's or timer's id is remembered: longer than any step's timeout. */
  readonly workDedupSeconds: number;
  /** How long dead letters are kept. */
  readonly deadLetterDays: number;
}

export const DEFAULT_TENANT_LIMITS: TenantLimits = { maxEventsPerRun: 10_000, workDedupSeconds: 3600, deadLetterDays: 14 };

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
  return {
    name: Streams.fleet(t),
    subjects: [Subjects.allFleet(t)],
    storage: 'file' as StreamConfig['storage'],
    retention: 'limits' as StreamConfig['retention'],
    discard: 'old' as StreamConfig['discard'],
    max_msgs_per_subject: ADMISSION_HISTORY,
    max_msg_size: 4096,
    // A revocation must not be undone by deleting it.
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

/** Creates the tenant's streams, or brings their settings up to date. Idempotent. */
export async function ensureTenant(jsm: JetStreamManager, t: TenantId, limits?: TenantLimits): Promise<void> {
  for (const cfg of [...streamConfigs(t, limits), fleetStreamConfig(t), policyStreamConfig(t)]) {
    try {
      await jsm.streams.info(cfg.name);
      await jsm.streams.update(cfg.name, cfg);
    } catch (e) {
      if (e instanceof JetStreamApiError && e.code === 10059) {
        await jsm.streams.add(cfg);
      } else {
        throw e;
      }
    }
  }
}

/** Every provisioned tenant (one with a command stream). */
export async function listTenants(jsm: JetStreamManager): Promise<TenantId[]> {
  const out: TenantId[] = [];
  for await (const name of jsm.streams.names()) {
    if (!name.startsWith(Streams.commandsPrefix)) continue;
    const t = name.slice(Streams.commandsPrefix.length);
    if (isTenantId(t)) out.push(t);
  }
  return out.sort();
}
