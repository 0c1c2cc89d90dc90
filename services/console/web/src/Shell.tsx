/** The frame around every signed-in view: navigation, tenant, live state, who is signed in, shortcuts. */
import { useCallback, useEffect, useRef, useState, type ReactNode } from 'react';
import { apiPaths, type ApprovalsResponse, type SessionInfo } from '../../src/api-types.js';
import { Link } from './components.js';
import { useGet, useRunStream, useStreamState, useSystem, useThrottled } from './hooks.js';
import { match, navigate, useLocation } from './router.js';

const VIEWS = [
  { key: 'runs', label: 'Runs', shortcut: 'r' },
  { key: 'approvals', label: 'Approvals', shortcut: 'a' },
  { key: 'workers', label: 'Workers', shortcut: 'w' },
  { key: 'audit', label: 'Audit log', shortcut: 'l' },
  { key: 'policies', label: 'Policies', shortcut: 'p' },
  { key: 'triggers', label: 'Triggers', shortcut: 't' },
  { key: 'datasync', label: 'Data sync', shortcut: 'd' },
] as const;

export function Shell({ session, tenant, onSignOut, children }: { session: SessionInfo; tenant: string | undefined; onSignOut: () => void; children: ReactNode }) {
  const loc = useLocation();
  const view = match('/t/:tenant/:view', loc.path)?.['view'];
  const current = view === 'start' ? 'runs' : (view ?? (match('/t/:tenant/runs/:runId', loc.path) ? 'runs' : undefined));
  const live = useStreamState(tenant);
  const [help, setHelp] = useState(false);
  const base = tenant ? `/t/${encodeURIComponent(tenant)}` : '';

  // The approvals badge: waiting approvals, refreshed when runs change.
  const waiting = useGet<ApprovalsResponse>(tenant ? `${apiPaths.approvals(tenant)}?status=waiting&limit=500` : null);
  const refresh = useThrottled(waiting.reload, 1000);
  useRunStream(tenant, refresh);
  const waitingCount = waiting.data?.approvals.length ?? 0;

  const toggleHelp = useCallback(() => setHelp((h) => !h), []);

  // A new view moves focus to its content, so keyboard and screen-reader users start there.
  const mainRef = useRef<HTMLElement>(null);
  const firstPath = useRef(loc.path);
  useEffect(() => {
    if (loc.path === firstPath.current) return;
    firstPath.current = '';
    mainRef.current?.focus({ preventScroll: true });
  }, [loc.path]);
  useShortcuts(base, toggleHelp);

  const switchTenant = (t: string) => {
    const view = current && current !== 'runs' ? current : 'runs';
    navigate(`/t/${encodeURIComponent(t)}/${view}`);
  };

  return (
    <>
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <header className="topbar">
        <Link to={base ? `${base}/runs` : '/'} className="brand">
          <span className="brand-mark" aria-hidden="true">
            C
          </span>
          Capstan
        </Link>
        <nav className="nav" aria-label="Views">
          {VIEWS.map((v) => (
            <Link
              key={v.key}
              to={`${base}/${v.key}`}
              aria-current={current === v.key ? 'page' : undefined}
              data-testid={`nav-${v.key}`}
              title={`${v.label} (g then ${v.shortcut})`}
            >
              {v.label}
              {v.key === 'approvals' && waitingCount > 0 ? (
                <span className="count" data-testid="approvals-count" aria-label={`${waitingCount} waiting`}>
                  {waitingCount}
                </span>
              ) : null}
            </Link>
          ))}
        </nav>
        <div className="topbar-end">
          <span className="live" data-state={live} data-testid="live" title={LIVE_WORDS[live]}>
            {live === 'open' ? 'Live' : live === 'connecting' ? 'Connecting' : live === 'error' ? 'Reconnecting' : 'Offline'}
          </span>
          {session.tenants.length > 1 && tenant ? (
            <label>
              <span className="sr-only">Tenant</span>
              <select value={tenant} onChange={(e) => switchTenant(e.target.value)} data-testid="tenant-select">
                {session.tenants.map((t) => (
                  <option key={t} value={t}>
                    {t}
                  </option>
                ))}
              </select>
            </label>
          ) : tenant ? (
            <span className="who" title="Tenant">
              {tenant}
            </span>
          ) : null}
          <span className="who" data-testid="whoami">
            {session.userId} <span className="muted">· {session.role}</span>
          </span>
          <button type="button" className="btn btn-ghost btn-sm" onClick={() => setHelp(true)} title="Keyboard shortcuts (?)">
            <kbd>?</kbd>
          </button>
          <button type="button" className="btn btn-ghost btn-sm" onClick={onSignOut} data-testid="signout">
            Sign out
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1} ref={mainRef}>
        {tenant ? <OutOfSyncBanner tenant={tenant} /> : null}
        {children}
      </main>
      {help ? <ShortcutsHelp onClose={() => setHelp(false)} /> : null}
    </>
  );
}

/**
 * Says, on every view, that the tenant's projections do not follow its run stream: the views
 * then show errors rather than pages, and this says why and what repairs it.
 */
function OutOfSyncBanner({ tenant }: { tenant: string }) {
  const out = useSystem(tenant).data?.outOfSync;
  if (!out) return null;
  return (
    <div className="alert" role="alert" data-testid="out-of-sync">
      <div>
        <strong>Projections out of sync</strong> (<code>{out.code}</code>): {out.message}
      </div>
    </div>
  );
}

const LIVE_WORDS = {
  open: 'Live updates are on: changes appear as they happen.',
  connecting: 'Connecting to live updates…',
  error: 'Live updates were interrupted; reconnecting. Data may be behind.',
  off: 'Live updates stopped (the server refused the stream); trying again every few seconds.',
} as const;

function typing(target: EventTarget | null): boolean {
  const el = target as HTMLElement | null;
  if (!el) return false;
  const tag = el.tagName;
  return tag === 'INPUT' || tag === 'TEXTAREA' || tag === 'SELECT' || el.isContentEditable;
}

/**
 * `/` search, `g r|a|w|l` views, `?` help. Inactive while typing and while a dialog is open;
 * Escape leaves a search field.
 */
function useShortcuts(base: string, toggleHelp: () => void): void {
  const pendingG = useRef(0);
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      if (e.metaKey || e.ctrlKey || e.altKey) return;
      if (document.querySelector('dialog[open]')) return;
      if (typing(e.target)) {
        if (e.key === 'Escape' && (e.target as HTMLElement).matches('[data-search]')) (e.target as HTMLElement).blur();
        return;
      }
      if (e.key === '/') {
        const search = document.querySelector<HTMLInputElement>('[data-search]');
        e.preventDefault();
        if (search) {
          search.focus();
          search.select();
        } else if (base) {
          navigate(`${base}/runs`);
          setTimeout(() => document.querySelector<HTMLInputElement>('[data-search]')?.focus(), 50);
        }
        return;
      }
      if (e.key === '?') {
        e.preventDefault();
        toggleHelp();
        return;
      }
      if (e.key === 'j' || e.key === 'k') {
        const rows = [...document.querySelectorAll<HTMLElement>('[data-row-link]')];
        if (rows.length === 0) return;
        e.preventDefault();
        const at = rows.indexOf(document.activeElement as HTMLElement);
        const next = at < 0 ? 0 : Math.min(rows.length - 1, Math.max(0, at + (e.key === 'j' ? 1 : -1)));
        rows[next]?.focus();
        rows[next]?.scrollIntoView({ block: 'nearest' });
        return;
      }
      if (e.key === 'g') {
        pendingG.current = Date.now();
        return;
      }
      if (Date.now() - pendingG.current < 1200) {
        pendingG.current = 0;
        const v = VIEWS.find((x) => x.shortcut === e.key);
        if (v && base) {
          e.preventDefault();
          navigate(`${base}/${v.key}`);
        }
      }
    };
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, [base, toggleHelp]);
}

function ShortcutsHelp({ onClose }: { onClose: () => void }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    ref.current?.showModal();
  }, []);
  return (
    <dialog ref={ref} onClose={onClose} aria-labelledby="shortcuts-title" data-testid="shortcuts">
      <form method="dialog">
        <h2 id="shortcuts-title">Keyboard shortcuts</h2>
        <dl className="shortcuts">
          <dt>
            <kbd>/</kbd>
          </dt>
          <dd>Search runs (or filter the current list)</dd>
          <dt>
            <kbd>j</kbd> <kbd>k</kbd>
          </dt>
          <dd>Next / previous row in a list; Enter opens it</dd>
          {VIEWS.map((v) => (
            <div key={v.key} style={{ display: 'contents' }}>
              <dt>
                <kbd>g</kbd> <kbd>{v.shortcut}</kbd>
              </dt>
              <dd>Go to {v.label.toLowerCase()}</dd>
            </div>
          ))}
          <dt>
            <kbd>Esc</kbd>
          </dt>
          <dd>Leave a search field, close a dialog</dd>
          <dt>
            <kbd>?</kbd>
          </dt>
          <dd>Show this help</dd>
        </dl>
        <div className="actions">
          <button className="btn btn-primary" data-autofocus>
            Close
          </button>
        </div>
      </form>
    </dialog>
  );
}
