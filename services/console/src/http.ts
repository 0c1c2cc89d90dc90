/**
 * The console API's HTTP plumbing: its error type and how every error becomes an answer,
 * query-parameter checks, the session a request carries, role checks.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { httpStatusOf } from '@capstan/kit';
import { CapstanError, InvalidArgumentError } from '@capstan/schemas';
import { ACTION_ROLE, ApiErrorCode, roleAllows, type ActionName, type ApiErrorBody } from './api-types.js';
import type { Session } from './session.js';
import { roleIn } from './users.js';

/**
 * An answer other than 200, with the code and message the caller gets. The status is the
 * code's in kit's http-status.ts, the table every Capstan API answers by; only an action
 * refused by the state of things (409) and Fastify's own 4xx say theirs.
 */
export class HttpError extends Error {
  readonly status: number;
  constructor(
    readonly code: string,
    message: string,
    status?: number,
  ) {
    super(message);
    this.name = 'HttpError';
    this.status = status ?? httpStatusOf(code) ?? 500;
  }
}

export const unauthenticated = (why = 'sign in first') => new HttpError(ApiErrorCode.Unauthenticated, why);
export const forbidden = (why: string) => new HttpError(ApiErrorCode.Forbidden, why);
export const notFound = (why: string) => new HttpError(ApiErrorCode.NotFound, why);
export const badRequest = (why: string) => new HttpError(ApiErrorCode.InvalidArgument, why);
export const conflict = (why: string) => new HttpError(ApiErrorCode.Conflict, why);

/**
 * What the caller is told. A CapstanError's own message says what to fix; anything else is
 * a bare 500 (logged by the caller of this), so driver text and stacks never leave the
 * process. `acting` marks an action: a typed error the command side raised about the
 * state of things (already decided, not failed, …) is then a 409.
 */
export function toHttpError(e: unknown, acting = false): HttpError {
  if (e instanceof HttpError) return e;
  if (CapstanError.is(e)) {
    // One table for every Capstan API (kit's http-status.ts); actions add the 409.
    const status = httpStatusOf(e.code) ?? (acting && !e.retryable ? 409 : undefined);
    if (status !== undefined) return new HttpError(e.code, e.message, status);
  }
  // Fastify's own 4xx (a body that is not JSON, an unsupported media type, a body too large).
  const fst = e as { statusCode?: unknown; code?: unknown; message?: unknown };
  if (typeof fst.statusCode === 'number' && fst.statusCode >= 400 && fst.statusCode < 500 && typeof fst.code === 'string' && fst.code.startsWith('FST_')) {
    const status = fst.statusCode === 401 || fst.statusCode === 403 || fst.statusCode === 404 ? fst.statusCode : 400;
    return new HttpError(ApiErrorCode.InvalidArgument, `bad request: ${String(fst.message).slice(0, 200)}`, status);
  }
  return new HttpError(ApiErrorCode.Internal, 'internal error; see the console log');
}

export function errorBody(e: HttpError): ApiErrorBody {
  return { error: { code: e.code, message: e.message } };
}

export function sendError(reply: FastifyReply, e: HttpError): FastifyReply {
  return reply.code(e.status).header('cache-control', 'no-store').send(errorBody(e));
}

/**
 * A route pattern from the contract's path builder called with `:name` placeholders: the
 * builder percent-encodes segments, and a placeholder's colon must stay a colon.
 */
export function pattern(path: string): string {
  return path.replace(/%3A/g, ':');
}

// ---------------------------------------------------------------------------------------
// Query parameters.

export interface Query {
  one(name: string): string | undefined;
  all(name: string): string[];
}

/**
 * The request's query parameters, refusing names the endpoint does not take and repeats of
 * those it takes once: a misspelt filter must not silently widen a search.
 */
export function queryOf(req: FastifyRequest, takes: readonly string[], repeatable: readonly string[] = []): Query {
  const q = (req.query ?? {}) as Record<string, string | string[] | undefined>;
  const values = new Map<string, string[]>();
  for (const [k, v] of Object.entries(q)) {
    const vs = v === undefined ? [] : Array.isArray(v) ? v : [v];
    if (!takes.includes(k)) {
      const name = JSON.stringify(k.slice(0, 64));
      throw new InvalidArgumentError(
        takes.length > 0 ? `unknown query parameter ${name}; this endpoint takes ${takes.join(', ')}` : `unknown query parameter ${name}; this endpoint takes none`,
      );
    }
    if (vs.length > 1 && !repeatable.includes(k)) throw new InvalidArgumentError(`query parameter ${k} is given ${vs.length} times; give it once`);
    values.set(k, vs);
  }
  return { one: (n) => values.get(n)?.[0], all: (n) => values.get(n) ?? [] };
}

/** The request's JSON body as an object; an absent body is an empty one. */
export function bodyOf(req: FastifyRequest): unknown {
  return req.body === undefined || req.body === null ? {} : req.body;
}

// ---------------------------------------------------------------------------------------
// Sessions on requests.

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by the authentication hook on every `/api` route that needs a session. */
    consoleSession: Session | null;
  }
}

export function sessionOf(req: FastifyRequest): Session {
  const s = req.consoleSession;
  // The hook runs before every handler that calls this; reaching here without one is a bug,
  // answered as "not signed in" rather than served.
  if (!s) throw unauthenticated();
  return s;
}

/** Refuses `action` in tenant `t` unless the user's role there allows it (roles are per tenant). */
export function requireAction(s: Session, action: ActionName, t: string): void {
  const role = roleIn(s, t);
  if (!roleAllows(role, action)) throw forbidden(`${action} needs the ${ACTION_ROLE[action]} role; ${s.userId} is ${role} in ${t}`);
}
