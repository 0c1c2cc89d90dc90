/** Data hooks: a GET with loading/error state, the shared live stream, a ticking clock. */
import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from 'react';
import { apiPaths, RunStreamEventName, type RunStreamChange, type RunSummary, type SystemResponse } from '../../src/api-types.js';
import { get } from './api.js';

export interface Loaded<T> {
  readonly data: T | undefined;
  readonly error: unknown;
  readonly loading: boolean;
  /** Fetches again; keeps showing the current data meanwhile (no flash of the loading state). */
  readonly reload: () => void;
}

/** GETs `path` (null: nothing to fetch), again whenever it changes. */
export function useGet<T>(path: string | null): Loaded<T> {
  const [state, setState] = useState<{ path: string | null; data?: T; error?: unknown; loading: boolean }>({ path, loading: path !== null });
  const [nonce, setNonce] = useState(0);
  useEffect(() => {
    if (path === null) return undefined;
    const ac = new AbortController();
    setState((s) => (s.path === path ? { ...s, loading: true } : { path, loading: true }));
    get<T>(path, ac.signal).then(
      (data) => !ac.signal.aborted && setState({ path, data, loading: false }),
      (error: unknown) => !ac.signal.aborted && setState((s) => ({ path, ...(s.path === path && s.data !== undefined ? { data: s.data } : {}), error, loading: false })),
    );
    return () => ac.abort();
  }, [path, nonce]);
  const reload = useCallback(() => setNonce((n) => n + 1), []);
  const current = state.path === path;
  return { data: current ? state.data : undefined, error: current ? state.error : undefined, loading: path !== null && (!current || state.loading), reload };
}

/** The tenant's projection state (lag, checkpoint, out of sync), fetched again every 10 s. */
export function useSystem(tenant: string): Loaded<SystemResponse> {
  const sys = useGet<SystemResponse>(apiPaths.system(tenant));
  const { reload } = sys;
  useEffect(() => {
    const t = setInterval(reload, 10_000);
    return () => clearInterval(t);
  }, [reload]);
  return sys;
}

// ---------------------------------------------------------------------------------------
// The live stream: one EventSource per tenant, shared by every view that listens.

export type StreamState = 'connecting' | 'open' | 'error' | 'off';
type RunsListener = (runs: readonly RunSummary[]) => void;

interface TenantStream {
  readonly source: EventSource;
  state: StreamState;
}

const streams = new Map<string, TenantStream>();
const listeners = new Map<string, Set<RunsListener>>();
const stateListeners = new Set<() => void>();

function setStreamState(s: TenantStream, state: StreamState): void {
  if (s.state === state) return;
  s.state = state;
  for (const l of stateListeners) l();
}

function open(tenant: string): TenantStream {
  const existing = streams.get(tenant);
  if (existing) return existing;
  const source = new EventSource(apiPaths.runStream(tenant), { withCredentials: true });
  const s: TenantStream = { source, state: 'connecting' };
  streams.set(tenant, s);
  source.addEventListener(RunStreamEventName.Ready, () => setStreamState(s, 'open'));
  source.addEventListener('open', () => setStreamState(s, 'open'));
  source.addEventListener('error', () => {
    if (source.readyState !== EventSource.CLOSED) {
      setStreamState(s, 'error');
      return;
    }
    // The server refused the stream (an HTTP error ends EventSource's own retries): try
    // again in a while, as long as the stream is still wanted.
    setStreamState(s, 'off');
    setTimeout(() => {
      if (streams.get(tenant) !== s) return;
      streams.delete(tenant);
      open(tenant);
      for (const l of stateListeners) l();
    }, 5000);
  });
  source.addEventListener(RunStreamEventName.Runs, (ev) => {
    setStreamState(s, 'open');
    let change: RunStreamChange;
    try {
      change = JSON.parse((ev as MessageEvent<string>).data) as RunStreamChange;
    } catch {
      return;
    }
    if (!Array.isArray(change.runs)) return;
    for (const l of listeners.get(tenant) ?? []) l(change.runs);
  });
  return s;
}

/** Closes every stream (on sign-out). */
export function closeStreams(): void {
  for (const s of streams.values()) s.source.close();
  streams.clear();
  for (const l of stateListeners) l();
}

/** Calls `onRuns` with each batch of changed runs of `tenant`, while mounted. */
export function useRunStream(tenant: string | undefined, onRuns: RunsListener): void {
  const ref = useRef(onRuns);
  ref.current = onRuns;
  useEffect(() => {
    if (!tenant) return undefined;
    open(tenant);
    const l: RunsListener = (runs) => ref.current(runs);
    let set = listeners.get(tenant);
    if (!set) listeners.set(tenant, (set = new Set()));
    set.add(l);
    return () => {
      set.delete(l);
    };
  }, [tenant]);
}

/** The state of `tenant`'s stream, for the "live" indicator; opens it if needed. */
export function useStreamState(tenant: string | undefined): StreamState {
  useEffect(() => {
    if (tenant) open(tenant);
  }, [tenant]);
  return useSyncExternalStore(
    (l) => {
      stateListeners.add(l);
      return () => stateListeners.delete(l);
    },
    () => (tenant ? (streams.get(tenant)?.state ?? 'connecting') : 'off'),
  );
}

/** The current time, refreshed every `everyMs`, for "3 min ago" labels. */
export function useNow(everyMs = 15_000): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), everyMs);
    return () => clearInterval(t);
  }, [everyMs]);
  return now;
}

/** A callback run at most once per `ms`, trailing (for refetches triggered by the stream). */
export function useThrottled(f: () => void, ms: number): () => void {
  const ref = useRef(f);
  ref.current = f;
  const timer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  useEffect(() => () => clearTimeout(timer.current), []);
  return useCallback(() => {
    if (timer.current !== undefined) return;
    timer.current = setTimeout(() => {
      timer.current = undefined;
      ref.current();
    }, ms);
  }, [ms]);
}
