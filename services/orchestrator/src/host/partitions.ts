/**
 * Partition ownership for one tenant. Runs are hashed to the tenant's fixed number of
 * partitions (`partitionOf`); an orchestrator instance decides a run only while it holds its
 * partition's lease, a record in the tenant's lease bucket (`CAP_LEASES_<t>`) written with
 * compare-and-set on the key's last revision. The revision is the lease's epoch.
 *
 * Every `renewMs` an instance renews its presence (a record with a TTL) and its leases,
 * reads the table, and aims for ceil(partitions / live instances): it gives up the surplus
 * and takes free or expired leases up to its share. So instances join and leave without a
 * restart; a departed instance's leases expire after `ttlMs`.
 *
 * Fencing, in two fences:
 * - an instance stops deciding a partition `renewMs` before its lease expires by its own
 *   clock, so a paused process wakes up knowing it may no longer own anything;
 * - a decision made before the pause and appended after it carries the run's expected last
 *   subject sequence: if the new owner has moved the run on, the server refuses it. On that
 *   refusal the instance steps down from the partition (`fenced`): it stops deciding it,
 *   drops its cached runs, and takes it back only if the table still names it at its epoch.
 */
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import { decode, DEFAULT_PARTITIONS, encode, partitionOf, Streams, Subjects, type RunId, type TenantId } from '@capstan/schemas';
import { parsePartitionCount, type Logger } from '@capstan/kit';

export interface PartitionTable {
  readonly instance: string;
  /** The tenant's partition count (recorded at provisioning). */
  readonly count: number;
  partitionOf(runId: RunId): number;
  /** Whether this instance may decide runs of `p` now. */
  owns(p: number): boolean;
  /** The live owner the table last named for `p`, if any (maybe this instance). */
  ownerOf(p: number): string | undefined;
  owned(): number[];
  /** An append for a run of `p` was refused: step down from `p` until the table says otherwise. */
  fenced(p: number): void;
  start(): Promise<void>;
  /** Gives every lease back at once (a graceful stop), so others need not wait for expiry. */
  stop(): Promise<void>;
}

export interface PartitionTableOptions {
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly tenant: TenantId;
  readonly instance: string;
  readonly ttlMs: number;
  readonly renewMs: number;
  readonly log: Logger;
  /** Called when this instance stops owning `p` (released, lost or fenced): its cache for `p` is dropped. */
  readonly onLost: (p: number) => void;
}

interface LeaseRecord {
  readonly owner: string;
  readonly expiresAt: number;
}

interface Seen extends LeaseRecord {
  readonly rev: number;
}

export async function createPartitionTable(o: PartitionTableOptions): Promise<PartitionTable> {
  const { js, jsm, tenant: t, instance, ttlMs, renewMs, log } = o;
  const stream = Streams.leases(t);
  const countMsg = await jsm.direct.getMessage(stream, { last_by_subj: Subjects.partitionCount(t) }).catch(() => null);
  const count = countMsg ? parsePartitionCount(countMsg.data) : DEFAULT_PARTITIONS;
  if (!countMsg) log.warn({ partitions: count }, 'no partition count recorded for the tenant (provision it again); using the default');
  /** Leases held: revision (epoch) and when they expire. */
  const held = new Map<number, { rev: number; expiresAt: number }>();
  /** Partitions stepped down from after a refused append, until the next read of the table. */
  const suspect = new Set<number>();
  /** Partitions given up whose late appends were refused (said once each). */
  const refusedAfterLoss = new Set<number>();
  let table = new Map<number, Seen>();
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let stopped = false;

  function lose(p: number, why: string): void {
    if (!held.delete(p)) return;
    log.info({ partition: p, why }, 'partition given up');
    o.onLost(p);
  }

  /** Writes a lease record under compare-and-set; the new revision, or undefined if someone else wrote first. */
  async function put(p: number, rec: LeaseRecord, rev: number): Promise<number | undefined> {
    try {
      const ack = await js.publish(Subjects.partitionLease(t, p), encode(rec), { expect: { lastSubjectSequence: rev } });
      return ack.seq;
    } catch (e) {
      log.debug({ err: e, partition: p }, 'lease write lost the race');
      return undefined;
    }
  }

  async function read(now: number): Promise<{ leases: Map<number, Seen>; members: Set<string> }> {
    const leases = new Map<number, Seen>();
    const members = new Set<string>([instance]);
    const leasePrefix = Subjects.allPartitionLeases(t).slice(0, -1);
    const memberPrefix = Subjects.allOrchestratorMembers(t).slice(0, -1);
    const iter = await jsm.direct.getLastMessagesFor(stream, { multi_last: [Subjects.allPartitionLeases(t), Subjects.allOrchestratorMembers(t)] });
    for await (const m of iter) {
      const rec = decode(m.data) as Partial<LeaseRecord>;
      if (typeof rec.expiresAt !== 'number') continue;
      if (m.subject.startsWith(leasePrefix)) {
        leases.set(Number(m.subject.slice(leasePrefix.length)), { owner: String(rec.owner ?? ''), expiresAt: rec.expiresAt, rev: m.seq });
      } else if (m.subject.startsWith(memberPrefix) && rec.expiresAt > now) {
        members.add(m.subject.slice(memberPrefix.length));
      }
    }
    return { leases, members };
  }

  async function round(): Promise<void> {
    const now = Date.now();
    const expiresAt = now + ttlMs;
    await js.publish(Subjects.orchestratorMember(t, instance), encode({ owner: instance, expiresAt }), { ttl: `${Math.ceil((ttlMs * 2) / 1000)}s` });
    // Renew first: a lease renewed late is still ours if nobody took it.
    await Promise.all(
      [...held].map(async ([p, h]) => {
        const rev = await put(p, { owner: instance, expiresAt }, h.rev);
        if (rev === undefined) lose(p, 'lease taken by another instance');
        else held.set(p, { rev, expiresAt });
      }),
    );
    const { leases, members } = await read(now);
    table = leases;
    // A refused append made us doubt these: still ours at our epoch means the refusal was not an owner's.
    for (const p of suspect) {
      const h = held.get(p);
      const seen = leases.get(p);
      if (h && !(seen?.owner === instance && seen.rev === h.rev)) lose(p, 'fenced: another owner appended');
    }
    suspect.clear();
    const share = Math.ceil(count / members.size);
    // Surplus goes back (the highest partitions first), so joiners find free leases.
    for (const p of [...held.keys()].sort((a, b) => b - a).slice(0, Math.max(0, held.size - share))) {
      const h = held.get(p);
      lose(p, 'rebalance');
      if (h) await put(p, { owner: '', expiresAt: 0 }, h.rev);
    }
    const want = share - held.size;
    if (want <= 0) return;
    const free: number[] = [];
    for (let p = 0; p < count; p++) {
      if (held.has(p)) continue;
      const seen = leases.get(p);
      if (!seen || seen.owner === '' || seen.expiresAt <= now) free.push(p);
    }
    // Start at a different place per instance, so joiners do not all race for partition 0.
    const offset = partitionOf(instance, count);
    free.sort((a, b) => ((a - offset + count) % count) - ((b - offset + count) % count));
    for (const p of free.slice(0, want)) {
      const rev = await put(p, { owner: instance, expiresAt }, leases.get(p)?.rev ?? 0);
      if (rev !== undefined) {
        held.set(p, { rev, expiresAt });
        refusedAfterLoss.delete(p);
        log.info({ partition: p, epoch: rev }, 'partition taken');
      }
    }
  }

  let busy = false;
  let soon = false;
  function schedule(delay: number): void {
    if (stopped) return;
    clearTimeout(timer);
    timer = setTimeout(() => {
      busy = true;
      running = round()
        .catch((e: unknown) => log.warn({ err: e }, 'partition lease round failed'))
        .finally(() => {
          busy = false;
          const again = soon;
          soon = false;
          schedule(again ? 0 : renewMs);
        });
    }, delay);
  }

  return {
    instance,
    count,
    partitionOf: (runId) => partitionOf(runId, count),
    owns(p) {
      const h = held.get(p);
      // Stop a renewal early: whoever takes over waits for the full expiry.
      return h !== undefined && !suspect.has(p) && Date.now() < h.expiresAt - renewMs;
    },
    ownerOf(p) {
      if (held.has(p)) return instance;
      const seen = table.get(p);
      return seen && seen.owner !== '' && seen.expiresAt > Date.now() ? seen.owner : undefined;
    },
    owned: () => [...held.keys()].sort((a, b) => a - b),
    fenced(p) {
      if (!held.has(p)) {
        // The renewal saw the lease taken before this append's refusal came back: the fence
        // worked and there is nothing left to give up. Said once per partition lost.
        if (!refusedAfterLoss.has(p)) log.warn({ partition: p }, 'append refused in a partition this instance held: given up already');
        refusedAfterLoss.add(p);
        return;
      }
      if (suspect.has(p)) return;
      log.warn({ partition: p, epoch: held.get(p)?.rev }, 'append refused in a partition this instance held: stepping down');
      suspect.add(p);
      o.onLost(p);
      // Look at the table now rather than at the next renewal.
      soon = true;
      if (!busy) schedule(0);
    },
    async start() {
      await round();
      schedule(renewMs);
    },
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running?.catch(() => undefined);
      await js.publish(Subjects.orchestratorMember(t, instance), encode({ owner: instance, expiresAt: 0 }), { ttl: '1s' }).catch(() => undefined);
      await Promise.all(
        [...held].map(async ([p, h]) => {
          held.delete(p);
          await put(p, { owner: '', expiresAt: 0 }, h.rev);
        }),
      );
    },
  };
}
