/**
 * A small history router: the path is the state, so every view has a URL an operator can
 * paste into an incident channel. Links are real <a href> elements (middle-click, copy link
 * work); a plain left click is turned into pushState.
 */
import { useEffect, useSyncExternalStore, type MouseEvent } from 'react';

const listeners = new Set<() => void>();

function notify(): void {
  for (const l of listeners) l();
}

window.addEventListener('popstate', notify);

export function navigate(to: string, opts: { replace?: boolean } = {}): void {
  const here = location.pathname + location.search;
  if (to === here) return;
  if (opts.replace) history.replaceState(null, '', to);
  else history.pushState(null, '', to);
  notify();
  if (!opts.replace) window.scrollTo(0, 0);
}

function subscribe(l: () => void): () => void {
  listeners.add(l);
  return () => listeners.delete(l);
}

const snapshot = () => location.pathname + location.search;

export interface Location {
  readonly path: string;
  readonly query: URLSearchParams;
  readonly href: string;
}

export function useLocation(): Location {
  const href = useSyncExternalStore(subscribe, snapshot);
  const u = new URL(href, location.origin);
  return { path: u.pathname, query: u.searchParams, href };
}

/** A pattern such as `/t/:tenant/runs/:runId`; returns the decoded params or undefined. */
export function match(pattern: string, path: string): Record<string, string> | undefined {
  const p = pattern.split('/').filter(Boolean);
  const s = path.split('/').filter(Boolean);
  if (p.length !== s.length) return undefined;
  const out: Record<string, string> = {};
  for (let i = 0; i < p.length; i++) {
    const want = p[i] as string;
    const got = s[i] as string;
    if (want.startsWith(':')) {
      try {
        out[want.slice(1)] = decodeURIComponent(got);
      } catch {
        return undefined;
      }
    } else if (want !== got) return undefined;
  }
  return out;
}

/** A click that should stay in the page (not a new tab, not a download). */
export function isPlainClick(e: MouseEvent): boolean {
  return e.button === 0 && !e.metaKey && !e.ctrlKey && !e.shiftKey && !e.altKey && !e.defaultPrevented;
}

/** Sets document.title for the current view. */
export function useTitle(title: string): void {
  useEffect(() => {
    document.title = title ? `${title} · Capstan` : 'Capstan console';
  }, [title]);
}
