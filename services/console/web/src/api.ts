/**
 * The console API from the browser: typed GETs and actions over the contract in
 * services/console/src/api-types.ts. Every failure becomes an ApiError carrying the server's
 * `{ error: { code, message } }`, or words of our own when the server could not be reached.
 */
import { apiPaths, CSRF_HEADER, type ApiErrorBody, type SessionInfo } from '../../src/api-types.js';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

let csrfToken = '';
let onUnauthenticated: () => void = () => undefined;

/** The CSRF token of the current session, sent on every call that is not a GET. */
export function setCsrfToken(token: string): void {
  csrfToken = token;
}

/** Called when a call answers 401 (the session expired or was signed out elsewhere). */
export function setOnUnauthenticated(f: () => void): void {
  onUnauthenticated = f;
}

function isErrorBody(x: unknown): x is ApiErrorBody {
  if (typeof x !== 'object' || x === null || !('error' in x)) return false;
  const e = (x as { error: unknown }).error;
  return typeof e === 'object' && e !== null && typeof (e as { code?: unknown }).code === 'string' && typeof (e as { message?: unknown }).message === 'string';
}

async function call<T>(method: 'GET' | 'POST', path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (method !== 'GET') {
    headers['content-type'] = 'application/json';
    headers[CSRF_HEADER] = csrfToken;
  }
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers,
      credentials: 'same-origin',
      ...(body === undefined ? (method === 'GET' ? {} : { body: '{}' }) : { body: JSON.stringify(body) }),
      ...(signal ? { signal } : {}),
    });
  } catch (e) {
    if (signal?.aborted) throw e;
    throw new ApiError(0, 'unreachable', 'The console server did not answer. Check that it is running and your network is up.');
  }
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  if (!res.ok) {
    const err = isErrorBody(parsed)
      ? new ApiError(res.status, parsed.error.code, parsed.error.message)
      : new ApiError(res.status, `http_${res.status}`, `The server answered ${res.status} ${res.statusText || ''}`.trim() + '.');
    // A session that ended under a signed-in view; sign-in and the session check answer 401 by design.
    if (res.status === 401 && path !== apiPaths.signIn && path !== apiPaths.linkSignIn && path !== apiPaths.session) onUnauthenticated();
    throw err;
  }
  return parsed as T;
}

export function get<T>(path: string, signal?: AbortSignal): Promise<T> {
  return call<T>('GET', path, undefined, signal);
}

export function post<T>(path: string, body?: unknown): Promise<T> {
  return call<T>('POST', path, body);
}

/** Query string from a record; arrays repeat the key; empty values are left out. */
export function qs(params: Record<string, string | number | readonly string[] | undefined>): string {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === '') continue;
    if (Array.isArray(v)) for (const x of v as readonly string[]) u.append(k, x);
    else u.set(k, String(v));
  }
  const s = u.toString();
  return s ? `?${s}` : '';
}

export async function fetchSession(): Promise<SessionInfo | null> {
  try {
    return await get<SessionInfo>(apiPaths.session);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return null;
    throw e;
  }
}

/** Words for an error, as shown to the operator. */
export function describeError(e: unknown): { code: string; message: string } {
  if (e instanceof ApiError) return { code: e.code, message: e.message };
  if (e instanceof Error) return { code: 'client_error', message: e.message };
  if (typeof e === 'object' && e !== null && typeof (e as { message?: unknown }).message === 'string') {
    const o = e as { code?: unknown; message: string };
    return { code: typeof o.code === 'string' ? o.code : 'no_tenant', message: o.message };
  }
  return { code: 'client_error', message: String(e) };
}
