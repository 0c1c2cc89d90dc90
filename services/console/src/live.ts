/**
 * Live run updates over server-sent events.
 *
 * One poller per tenant that has listeners, once a second: the projection checkpoint says
 * whether anything was applied since the last tick (one primary-key read); when it moved,
 * the event index (keyed by tenant and stream sequence) names the runs those events
 * touched, and their rows are read and fanned out to every listener. The poller stops when
 * the last listener leaves. Nothing here ever writes.
 */
import type { FastifyInstance } from 'fastify';
import { readCheckpoints, type Database, type Logger, type RunRow } from '@capstan/kit';
import type { TenantId } from '@capstan/schemas';
import { apiPaths, RunStreamEventName, type RunStreamChange, type RunStreamReady } from './api-types.js';
import { pattern, queryOf, sessionOf } from './http.js';
import { toRunSummary } from './views.js';
import type { Session } from './session.js';

export type RunsListener = (change: RunStreamChange) => void;

export interface LiveHub {
  subscribe(tenant: TenantId, listener: RunsListener): () => void;
  /** Tenants being polled now (for tests and diagnostics). */
  polling(): string[];
  stop(): void;
}

/** Events read per tick at most; a larger burst sends the latest runs and asks for a reload. */
const MAX_EVENTS_PER_TICK = 2000;
const RUN_CHUNK = 500;

interface Poller {
  readonly listeners: Set<RunsListener>;
  timer: NodeJS.Timeout | undefined;
  /** The checkpoint already reported; undefined until the first tick reads it. */
  last: number | undefined;
  busy: boolean;
}

export function createLiveHub(db: Database, log: Logger, intervalMs = 1000): LiveHub {
  const pollers = new Map<TenantId, Poller>();

  async function changedRuns(tenant: TenantId, after: number, upTo: number): Promise<RunRow[]> {
    const events = await db.db.query.events.findMany({
      columns: { runId: true },
      where: (e, { and, eq, gt, lte }) => and(eq(e.tenant, tenant), gt(e.streamSeq, after), lte(e.streamSeq, upTo)),
      orderBy: (e, { asc }) => [asc(e.streamSeq)],
      limit: MAX_EVENTS_PER_TICK,
    });
    const ids = [...new Set(events.map((e) => e.runId))];
    const rows: RunRow[] = [];
    for (let i = 0; i < ids.length; i += RUN_CHUNK) {
      const chunk = ids.slice(i, i + RUN_CHUNK);
      rows.push(...(await db.db.query.runs.findMany({ where: (r, { and, eq, inArray }) => and(eq(r.tenant, tenant), inArray(r.runId, chunk)) })));
    }
    return rows.sort((a, b) => a.updatedAt.getTime() - b.updatedAt.getTime());
  }

  async function tick(tenant: TenantId, p: Poller): Promise<void> {
    if (p.busy) return;
    p.busy = true;
    try {
      const checkpoint = (await readCheckpoints(db, [tenant])).get(tenant) ?? 0;
      if (p.last === undefined || checkpoint < p.last) {
        // First tick, or the projections were rebuilt from scratch: start from here.
        p.last = checkpoint;
        return;
      }
      if (checkpoint === p.last) return;
      const resync = checkpoint - p.last > MAX_EVENTS_PER_TICK;
      const runs = await changedRuns(tenant, Math.max(p.last, checkpoint - MAX_EVENTS_PER_TICK), checkpoint);
      p.last = checkpoint;
      if (runs.length === 0 && !resync) return;
      const change: RunStreamChange = { runs: runs.map(toRunSummary), ...(resync ? { resync: true } : {}) };
      for (const l of p.listeners) {
        try {
          l(change);
        } catch (err) {
          log.warn({ err, tenant }, 'a live-update listener failed');
        }
      }
    } catch (err) {
      // The next tick tries again; listeners just see a pause.
      log.warn({ err, tenant }, 'live updates: reading the projections failed');
    } finally {
      p.busy = false;
    }
  }

  return {
    subscribe(tenant, listener) {
      let p = pollers.get(tenant);
      if (!p) {
        const fresh: Poller = { listeners: new Set(), timer: undefined, last: undefined, busy: false };
        fresh.timer = setInterval(() => void tick(tenant, fresh), intervalMs);
        pollers.set(tenant, fresh);
        void tick(tenant, fresh);
        p = fresh;
      }
      const poller = p;
      poller.listeners.add(listener);
      return () => {
        poller.listeners.delete(listener);
        if (poller.listeners.size === 0 && pollers.get(tenant) === poller) {
          clearInterval(poller.timer);
          pollers.delete(tenant);
        }
      };
    },
    polling: () => [...pollers.keys()],
    stop() {
      for (const p of pollers.values()) clearInterval(p.timer);
      pollers.clear();
    },
  };
}

const KEEP_ALIVE_MS = 15_000;

export interface StreamRegistry {
  /** Ends every open stream (the console is stopping). */
  closeAll(): void;
}

/** `GET /api/tenants/:tenant/runs/stream`: the hub's changes for one tenant, as SSE. */
export function registerRunStream(app: FastifyInstance, hub: LiveHub, tenantOf: (s: Session, raw: string) => TenantId): StreamRegistry {
  const open = new Set<() => void>();
  app.get<{ Params: { tenant: string } }>(pattern(apiPaths.runStream(':tenant')), async (req, reply) => {
    queryOf(req, []);
    const s = sessionOf(req);
    const tenant = tenantOf(s, req.params.tenant);
    // From here on the response is written by hand; Fastify's serializers and hooks are done.
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
      'x-content-type-options': 'nosniff',
    });
    const send = (event: string, data: unknown) => res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    res.write('retry: 3000\n\n');
    send(RunStreamEventName.Ready, { tenant } satisfies RunStreamReady);

    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      unsubscribe();
      clearInterval(keepAlive);
      open.delete(close);
      res.end();
    };
    const unsubscribe = hub.subscribe(tenant, (change) => {
      // A session that expires mid-stream ends the stream; the browser's reconnect then
      // meets the 401 and the UI signs in again.
      if (Date.now() >= s.exp) return close();
      send(RunStreamEventName.Runs, change);
    });
    const keepAlive = setInterval(() => {
      if (Date.now() >= s.exp) return close();
      res.write(': keep-alive\n\n');
    }, KEEP_ALIVE_MS);
    open.add(close);
    req.raw.on('close', close);
    res.on('error', close);
  });
  return {
    closeAll() {
      for (const c of [...open]) c();
    },
  };
}
