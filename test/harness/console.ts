/**
 * A console API client for tests that behaves like the browser: it keeps the session
 * cookie, sends the CSRF token and the console's Origin on every call that is not a GET,
 * and reads server-sent events off a streamed response. And a console the CLI reads
 * through, with an API token.
 */
import { createConsole, CSRF_HEADER, loadConfig, localAdmin, newApiToken, type Console, type ConsoleUser, type SessionInfo } from '@capstan/console';
import type { Database, Logger } from '@capstan/kit';
import { Role } from '@capstan/schemas';
import { accessAs, serviceEnv, silent } from './fixtures.js';

export interface Answer<T = unknown> {
  readonly status: number;
  readonly type: string;
  readonly headers: Headers;
  readonly body: T;
  readonly text: string;
}

export interface ErrorBody {
  readonly error: { readonly code: string; readonly message: string };
}

export class ConsoleClient {
  cookie: string | undefined;
  csrf: string | undefined;

  constructor(readonly base: string) {}

  async call<T = unknown>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Answer<T>> {
    const h: Record<string, string> = { ...(this.cookie ? { cookie: this.cookie } : {}) };
    if (method !== 'GET' && method !== 'HEAD') {
      h['origin'] = this.base;
      if (this.csrf) h[CSRF_HEADER] = this.csrf;
    }
    if (body !== undefined) h['content-type'] = 'application/json';
    const res = await fetch(this.base + path, { method, headers: { ...h, ...headers }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    const setCookie = res.headers.get('set-cookie');
    if (setCookie) {
      const pair = setCookie.split(';', 1)[0] ?? '';
      this.cookie = pair.endsWith('=') ? undefined : pair;
    }
    const text = await res.text();
    let parsed: unknown = undefined;
    try {
      parsed = JSON.parse(text);
    } catch {
      // CSV, HTML: the test reads `text`.
    }
    return { status: res.status, type: res.headers.get('content-type') ?? '', headers: res.headers, body: parsed as T, text };
  }

  get<T = unknown>(path: string, headers?: Record<string, string>): Promise<Answer<T>> {
    return this.call<T>('GET', path, undefined, headers);
  }

  post<T = unknown>(path: string, body: unknown = {}, headers?: Record<string, string>): Promise<Answer<T>> {
    return this.call<T>('POST', path, body, headers);
  }

  /** Signs in with a password (or, given `{ token }`, a link token) and keeps the session. */
  async signIn(userId: string, password: string): Promise<SessionInfo> {
    return this.started(await this.post<SessionInfo>('/api/auth/signin', { userId, password }));
  }

  async signInWithLink(link: string): Promise<SessionInfo> {
    const token = new URL(link).searchParams.get('token') ?? '';
    return this.started(await this.post<SessionInfo>('/api/auth/link', { token }));
  }

  private started(r: Answer<SessionInfo>): SessionInfo {
    if (r.status !== 200) throw new Error(`sign-in failed: ${r.status} ${r.text}`);
    this.csrf = r.body.csrfToken;
    return r.body;
  }

  /** Opens an SSE stream; `next(name)` resolves with the data of the next event of that name. */
  async stream(path: string): Promise<EventStream> {
    const ac = new AbortController();
    const res = await fetch(this.base + path, { headers: { accept: 'text/event-stream', ...(this.cookie ? { cookie: this.cookie } : {}) }, signal: ac.signal });
    const events: { event: string; data: unknown }[] = [];
    const waiters: (() => void)[] = [];
    let buf = '';
    let ended = false;
    const reading = (async () => {
      if (!res.body) return;
      const decoder = new TextDecoder();
      try {
        for await (const chunk of res.body) {
          buf += decoder.decode(chunk as Uint8Array, { stream: true });
          let i: number;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const event = /^event: (.*)$/m.exec(block)?.[1];
            const data = /^data: (.*)$/m.exec(block)?.[1];
            if (event && data !== undefined) events.push({ event, data: JSON.parse(data) as unknown });
            waiters.splice(0).forEach((w) => w());
          }
        }
      } catch {
        // Aborted by close().
      } finally {
        ended = true;
        waiters.splice(0).forEach((w) => w());
      }
    })();
    return {
      status: res.status,
      type: res.headers.get('content-type') ?? '',
      events,
      async next(name, timeoutMs = 10_000, from = 0) {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
          const hit = events.slice(from).find((e) => e.event === name);
          if (hit) return hit.data;
          if (ended) throw new Error(`the stream ended before a ${name} event`);
          const left = deadline - Date.now();
          if (left <= 0) throw new Error(`no ${name} event within ${timeoutMs} ms`);
          await new Promise<void>((resolve) => {
            const t = setTimeout(resolve, left);
            waiters.push(() => {
              clearTimeout(t);
              resolve();
            });
          });
        }
      },
      get ended() {
        return ended;
      },
      async close() {
        ac.abort();
        await reading;
      },
    };
  }
}

export interface EventStream {
  readonly status: number;
  readonly type: string;
  readonly events: { event: string; data: unknown }[];
  /** The data of the first event named `name` at index `from` or later, waiting for it if need be. */
  next(name: string, timeoutMs?: number, from?: number): Promise<unknown>;
  readonly ended: boolean;
  close(): Promise<void>;
}

/** A console that programs read through: what the CLI's read commands talk to in a test. */
export interface ReadConsole {
  readonly app: Console;
  readonly url: string;
  /** The API token of its user (an admin of the tenants given). */
  readonly token: string;
  /** The environment the CLI reads through it with. */
  readonly env: { readonly CAPSTAN_API_URL: string; readonly CAPSTAN_TOKEN: string };
  stop(): Promise<void>;
}

/**
 * A console over `db` (connected to NATS at `natsUrl` when given, as the console service)
 * whose one user, an admin of `tenants`, holds an API token; `users` adds others.
 */
export async function startReadConsole(o: { db: Database; natsUrl?: string; tenants: readonly string[]; users?: readonly ConsoleUser[]; log?: Logger }): Promise<ReadConsole> {
  const { token, sha256 } = newApiToken();
  const access = o.natsUrl ? await accessAs(o.natsUrl, Role.Console) : undefined;
  const app = createConsole({
    db: o.db,
    ...(access ? { access } : {}),
    config: loadConfig({ CONSOLE_PORT: '0', ...(o.natsUrl ? await serviceEnv(o.natsUrl, Role.Console) : {}) }, { dev: true }),
    log: o.log ?? silent,
    users: [localAdmin(o.tenants, [{ name: 'test', sha256, expiresAt: Date.now() + 86_400_000 }]), ...(o.users ?? [])],
  });
  await app.start();
  return {
    app,
    url: app.url,
    token,
    env: { CAPSTAN_API_URL: app.url, CAPSTAN_TOKEN: token },
    async stop() {
      await app.stop();
      await access?.close();
    },
  };
}
