/**
 * What every route module needs, the tenant check every tenant route makes, and the one
 * shape of an action route.
 */
import type { FastifyInstance } from 'fastify';
import type { Database, TenantAccess } from '@capstan/kit';
import { parseTenantId, type TenantId } from '@capstan/schemas';
import type { ActionName, ActionResponse } from './api-types.js';
import type { Commands } from './commands.js';
import { bodyOf, forbidden, queryOf, requireAction, sessionOf, toHttpError } from './http.js';
import type { Session } from './session.js';
import { groupsIn } from './users.js';

export interface RouteDeps {
  readonly db: Database;
  /** The command side; throws (503) when the console runs without NATS. */
  readonly commands: () => Commands;
  /** Stream positions for projection lag, when connected to NATS. */
  /** The console's connections to tenants, for stream positions (projection lag). */
  readonly access: () => Pick<TenantAccess, 'tenant'> | undefined;
  readonly tenantOf: (s: Session, raw: string) => TenantId;
}

/**
 * The tenant of a `/api/tenants/:tenant/...` path, if the session may see it. Membership is
 * checked before the id's syntax, so a tenant outside the session's is a 403 whatever it
 * looks like, and tells nothing about whether it exists.
 */
export function tenantOf(s: Session, raw: string): TenantId {
  if (!s.tenants.includes(raw)) throw forbidden(`${s.userId} has no access to tenant ${JSON.stringify(raw.slice(0, 64))}`);
  return parseTenantId(raw);
}

/** `by`: the signed-in user; `groups`: their approver groups in `t` (stated when the console signs their approvals). */
export type ActionHandler<P> = (
  c: Commands,
  t: TenantId,
  params: P,
  body: unknown,
  by: string,
  groups: readonly string[],
) => Promise<Omit<ActionResponse, 'accepted' | 'action' | 'tenant'>>;

/** A POST that publishes a command: tenant, role, body, state checks (in `handle`), 202. */
export function postAction<P extends { tenant: string }>(app: FastifyInstance, d: RouteDeps, name: ActionName, path: string, handle: ActionHandler<P>): void {
  app.post(path, async (req, reply): Promise<ActionResponse> => {
    const params = req.params as P;
    const s = sessionOf(req);
    const t = d.tenantOf(s, params.tenant);
    requireAction(s, name, t);
    queryOf(req, []);
    let done: Awaited<ReturnType<ActionHandler<P>>>;
    try {
      done = await handle(d.commands(), t, params, bodyOf(req), s.userId, groupsIn(s, t));
    } catch (e) {
      throw toHttpError(e, true);
    }
    req.log.info({ userId: s.userId, tenant: t, action: name, ...done }, 'console action');
    reply.code(202);
    return { accepted: true, action: name, tenant: t, ...done };
  });
}
