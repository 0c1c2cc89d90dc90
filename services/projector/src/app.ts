/**
 * Composition root of the projector: brings the projection schema up to date, then
 * projects every tenant it should (new tenants are picked up while running) into Postgres,
 * as long as the projections follow the tenant's run stream (checked at start and every
 * `syncCheckMs`), and stops by draining.
 */
import type { Subscription } from '@nats-io/transport-node';
import { ErrorCode, Role, Streams, type TenantId } from '@capstan/schemas';
import {
  addCollector,
  judgeSync,
  markOutOfSync,
  metrics,
  migrate,
  openDatabase,
  projectionLag,
  readFollowed,
  readStreamNow,
  recordFollowed,
  serviceAccess,
  streamSideOf,
  type Database,
  type Logger,
  type ProjectionLag,
  type TenantAccess,
  type TenantConnection,
  type TenantFollower,
} from '@capstan/kit';
import type { Config } from './config.js';
import { followAdmissions, followFleet, type AdmissionFollower } from './fleet.js';
import { followPolicies, type PolicyFollower } from './policies.js';
import { followTriggers } from './triggers.js';
import { followCatalog } from './catalog.js';
import type { StreamFollower } from './follow.js';
import { createTenantProjector, type TenantProjector, type TenantProjectorStats } from './tenant-projector.js';
import { rebuildProjections } from './rebuild.js';

export interface ProjectorApp {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Per-tenant counters, for status output and tests. */
  stats(): Record<string, Readonly<TenantStats>>;
  /** Per tenant: the run stream's last sequence, the checkpoint, and the difference. */
  lag(): Promise<ProjectionLag[]>;
}

export interface TenantStats extends TenantProjectorStats {
  /** Whether the tenant's streams are being projected (false while refused as out of sync). */
  readonly following: boolean;
  /** Rebuilds done because the run stream changed under the projections (`rebuild` mode). */
  readonly rebuilds: number;
  /** Why the projections are refused, while they are. */
  readonly outOfSync: string | undefined;
}

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;
const NO_STATS: TenantProjectorStats = { applied: 0, skipped: 0, deadLettered: 0, batches: 0, retries: 0, repositions: 0, checkpoint: 0 };

/** What the projector runs for one tenant. */
interface Served {
  /** The connection to the tenant's account. */
  readonly tc: TenantConnection;
  /** Worker heartbeats: not derived from a stream, so kept whatever the streams do. */
  readonly heartbeats: Subscription;
  /** The tenant's stream followers, while the projections follow its run stream. */
  following?: {
    readonly created: string;
    readonly runs: TenantProjector;
    readonly admissions: AdmissionFollower;
    readonly policies: PolicyFollower;
    readonly triggers: readonly StreamFollower[];
    readonly catalog: StreamFollower;
  };
  lastStats: TenantProjectorStats;
  checking?: Promise<void>;
  rebuilds: number;
  outOfSync?: string;
}

export async function createProjector(config: Config, log: Logger, opts: { database?: Database } = {}): Promise<ProjectorApp> {
  // Opening makes no connection yet: Postgres being down is dealt with in start().
  const database = opts.database ?? (await openDatabase({ url: config.databaseUrl, log, poolSize: 8 }));
  let access: TenantAccess | undefined;
  let follower: TenantFollower | undefined;
  let checker: NodeJS.Timeout | undefined;
  let stopping = false;
  let stopped: Promise<void> | undefined;
  const served = new Map<TenantId, Served>();
  // Out of sync, a tenant has no lag to speak of (its run projector stopped): the gauge says
  // why instead, and the last lag it had is not left standing as if it were current.
  const removeCollector = addCollector(() => {
    for (const [t, s] of served) {
      metrics.projectionOutOfSync.set({ tenant: t }, s.outOfSync ? 1 : 0);
      if (s.outOfSync) metrics.projectorLag.remove({ tenant: t });
    }
  });

  function startFollowing(t: TenantId, s: Served, created: string): Promise<void> {
    const { nc, js, jsm } = s.tc;
    const runs = createTenantProjector({ js, jsm, db: database.db, tenant: t, log, batch: config.batch, streamCreated: created, onOutOfSync: () => void check(t) });
    s.following = {
      created,
      runs,
      admissions: followAdmissions(nc, jsm, database.db, t, log),
      policies: followPolicies(nc, jsm, database.db, t, log),
      triggers: followTriggers(nc, jsm, database.db, t, log),
      catalog: followCatalog(nc, jsm, database.db, t, log),
    };
    return runs.start();
  }

  async function stopFollowing(s: Served): Promise<void> {
    const f = s.following;
    if (!f) return;
    s.following = undefined;
    s.lastStats = { ...f.runs.stats };
    await Promise.all([f.runs.stop(), f.admissions.stop(), f.policies.stop(), ...f.triggers.map((x) => x.stop()), f.catalog.stop()]);
  }

  /**
   * Does the tenant's projection still follow its run stream (see projection-sync.ts in kit)?
   * In sync: follow it (recording its identity when new). Not: stop following it, then
   * rebuild from the stream as it is now (`rebuild`, dev), or mark the tenant out of sync,
   * which every reader refuses, and say so (`refuse`, production), until the stream comes
   * back or `capstan projections rebuild` makes the projections follow the new one.
   * Runs once at a time per tenant; at start, every `syncCheckMs`, and when a batch was refused.
   */
  function check(t: TenantId): Promise<void> {
    const s = served.get(t);
    if (!s) return Promise.resolve();
    s.checking ??= checkNow(t, s).finally(() => (s.checking = undefined));
    return s.checking;
  }

  async function checkNow(t: TenantId, s: Served): Promise<void> {
    if (stopping) return;
    const stream = Streams.runs(t);
    // The checkpoint first, then the stream: read the other way round, events applied in
    // between would put the checkpoint past the stream's end as read.
    const followed = (await readFollowed(database.db, [t])).get(t);
    // No stream (yet, or the server's store is away): nothing to follow or compare with.
    const now = await readStreamNow(streamSideOf(s.tc), t);
    if (!now || stopping) return;
    const verdict = judgeSync(stream, followed, now);
    if (verdict.inSync) {
      if (verdict.record) await recordFollowed(database.db, t, now);
      else if (followed?.outOfSync) await markOutOfSync(database.db, t, null);
      if (s.outOfSync || followed?.outOfSync) log.info({ tenant: t, stream, created: now.created }, 'the projections follow the run stream again');
      s.outOfSync = undefined;
      // A stream created again while nothing was applied is simply followed anew.
      if (s.following && s.following.created !== now.created) await stopFollowing(s);
      if (!s.following && !stopping) await startFollowing(t, s, now.created);
      return;
    }
    await stopFollowing(s);
    if (config.onStreamChange === 'rebuild') {
      log.warn({ tenant: t, reason: verdict.reason }, 'the run stream changed under the projections; rebuilding them from it');
      const r = await rebuildProjections(database, () => Promise.resolve(s.tc.jsm), [t], { forgetOldStreams: true, log });
      s.rebuilds++;
      s.outOfSync = undefined;
      log.warn({ tenant: t, messages: r.messages, ms: Math.round(r.elapsedMs) }, 'projections rebuilt from the new run stream');
      if (!stopping) await startFollowing(t, s, now.created);
      return;
    }
    if (followed?.outOfSync !== verdict.reason) await markOutOfSync(database.db, t, verdict.reason);
    // Loud once per cause: the mark in the database keeps saying it to every reader.
    if (s.outOfSync !== verdict.reason)
      log.error(
        { tenant: t, code: ErrorCode.ProjectionOutOfSync, reason: verdict.reason },
        `projections of tenant ${t} refused: ${verdict.reason}; rebuild them with \`capstan projections rebuild --tenant ${t}\``,
      );
    s.outOfSync = verdict.reason;
  }

  async function serve(tc: TenantConnection): Promise<void> {
    const t = tc.tenant;
    const s: Served = { tc, heartbeats: followFleet(tc.nc, database.db, t, log), lastStats: NO_STATS, rebuilds: 0 };
    served.set(t, s);
    await check(t).catch((e: unknown) => log.warn({ tenant: t, err: e }, 'checking the run stream the projections follow failed; trying again'));
  }

  /** Postgres may be down when the projector starts; it waits for it rather than crash-looping. */
  async function migrateWhenReachable(d: Database): Promise<void> {
    for (let backoff = BACKOFF_MIN_MS; ; backoff = Math.min(backoff * 2, BACKOFF_MAX_MS)) {
      try {
        await migrate(d);
        return;
      } catch (e) {
        if (stopping) throw e;
        log.warn({ err: e, database: d.where, retryInMs: backoff }, 'projection schema migration failed; retrying');
        await new Promise((r) => setTimeout(r, backoff));
      }
    }
  }

  const checkAll = () => {
    if (stopping) return;
    checker = setTimeout(() => {
      void Promise.all(
        [...served.keys()].map((t) => check(t).catch((e: unknown) => log.warn({ tenant: t, err: e }, 'checking the run stream the projections follow failed; trying again'))),
      ).finally(checkAll);
    }, config.syncCheckMs);
    checker.unref();
  };

  return {
    stats: () =>
      Object.fromEntries(
        [...served].map(([t, s]) => [t, { ...(s.following?.runs.stats ?? s.lastStats), following: s.following !== undefined, rebuilds: s.rebuilds, outOfSync: s.outOfSync }]),
      ),
    async lag() {
      if (!access) return [];
      return projectionLag(database, access, [...served.keys()]);
    },
    async start() {
      await migrateWhenReachable(database);
      access = await serviceAccess(Role.Projector, config, config.name, log);
      follower = await access.follow(config.tenants, config.discoveryMs, serve, log);
      checkAll();
      log.info({ tenants: [...served.keys()], database: database.where, batch: config.batch, onStreamChange: config.onStreamChange }, 'projector started');
    },
    stop() {
      stopped ??= (async () => {
        stopping = true;
        removeCollector();
        follower?.stop();
        clearTimeout(checker);
        await Promise.all([...served.values()].map((s) => s.checking ?? Promise.resolve()));
        for (const s of served.values()) s.heartbeats.unsubscribe();
        await Promise.all([...served.values()].map((s) => stopFollowing(s)));
        await access?.close();
        // A database handed in belongs to the caller.
        if (!opts.database) await database.close();
      })();
      return stopped;
    },
  };
}
