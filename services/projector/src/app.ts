/**
 * Composition root of the projector: brings the projection schema up to date, then
 * projects every tenant it should (new tenants are picked up while running) into Postgres,
 * and stops by draining.
 */
import type { Subscription } from '@nats-io/transport-node';
import { Role, type TenantId } from '@capstan/schemas';
import {
  migrate,
  openDatabase,
  projectionLag,
  serviceAccess,
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
import { createTenantProjector, type TenantProjector, type TenantProjectorStats } from './tenant-projector.js';

export interface ProjectorApp {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Per-tenant counters, for status output and tests. */
  stats(): Record<string, Readonly<TenantProjectorStats>>;
  /** Per tenant: the run stream's last sequence, the checkpoint, and the difference. */
  lag(): Promise<ProjectionLag[]>;
}

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;

export async function createProjector(config: Config, log: Logger, opts: { database?: Database } = {}): Promise<ProjectorApp> {
  // Opening makes no connection yet: Postgres being down is dealt with in start().
  const database = opts.database ?? (await openDatabase({ url: config.databaseUrl, log, poolSize: 8 }));
  let access: TenantAccess | undefined;
  let follower: TenantFollower | undefined;
  let stopping = false;
  let stopped: Promise<void> | undefined;
  const projectors = new Map<TenantId, TenantProjector>();
  const fleets: Subscription[] = [];
  const admissions: AdmissionFollower[] = [];
  /** Policy versions, schedules and routes: side streams followed into their tables. */
  const policyVersions: PolicyFollower[] = [];

  async function serve({ tenant: t, nc, js, jsm }: TenantConnection): Promise<void> {
    const p = createTenantProjector({ js, jsm, db: database.db, tenant: t, log, batch: config.batch });
    projectors.set(t, p);
    fleets.push(followFleet(nc, database.db, t, log));
    admissions.push(followAdmissions(nc, jsm, database.db, t, log));
    policyVersions.push(followPolicies(nc, jsm, database.db, t, log));
    policyVersions.push(...followTriggers(nc, jsm, database.db, t, log));
    await p.start();
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

  return {
    stats: () => Object.fromEntries([...projectors].map(([t, p]) => [t, p.stats])),
    async lag() {
      if (!access) return [];
      return projectionLag(database, access, [...projectors.keys()]);
    },
    async start() {
      await migrateWhenReachable(database);
      access = await serviceAccess(Role.Projector, config, config.name, log);
      follower = await access.follow(config.tenants, config.discoveryMs, serve, log);
      log.info({ tenants: [...projectors.keys()], database: database.where, batch: config.batch }, 'projector started');
    },
    stop() {
      stopped ??= (async () => {
        stopping = true;
        follower?.stop();
        for (const f of fleets) f.unsubscribe();
        await Promise.all(admissions.map((a) => a.stop()));
        await Promise.all(policyVersions.map((p) => p.stop()));
        await Promise.all([...projectors.values()].map((p) => p.stop()));
        await access?.close();
        // A database handed in belongs to the caller.
        if (!opts.database) await database.close();
      })();
      return stopped;
    },
  };
}
