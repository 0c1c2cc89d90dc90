/**
 * The application: loads the session, routes to a view, and wraps every signed-in view in
 * the shell (navigation, tenant, live indicator, keyboard shortcuts).
 */
import { useCallback, useEffect, useMemo, useRef, useState, type ReactNode } from 'react';
import { apiPaths, type SessionInfo } from '../../src/api-types.js';
import { fetchSession, post, setCsrfToken, setOnUnauthenticated } from './api.js';
import { AppContext, ErrorAlert, Link, Loading, Toasts, useToasts, type Ctx } from './components.js';
import { closeStreams } from './hooks.js';
import { match, navigate, useLocation } from './router.js';
import { Shell } from './Shell.js';
import { SignInView } from './views/SignIn.js';
import { RunsView } from './views/Runs.js';
import { RunView } from './views/Run.js';
import { ApprovalsView } from './views/Approvals.js';
import { WorkersView } from './views/Workers.js';
import { AuditView } from './views/Audit.js';
import { PoliciesView } from './views/Policies.js';
import { StartRunView } from './views/StartRun.js';
import { TriggersView } from './views/Triggers.js';
import { DatasyncView } from './views/Datasync.js';

type SessionState = { kind: 'loading' } | { kind: 'none' } | { kind: 'error'; error: unknown } | { kind: 'in'; session: SessionInfo };

export function App() {
  const loc = useLocation();
  const [state, setState] = useState<SessionState>({ kind: 'loading' });
  const [toasts, toast] = useToasts();

  // A sign-in that lands while the first session check is still out wins over its answer
  // (a link sign-in races the check that found no cookie yet).
  const generation = useRef(0);

  const load = useCallback(() => {
    const gen = ++generation.current;
    setState({ kind: 'loading' });
    fetchSession().then(
      (session) => {
        if (gen !== generation.current) return;
        if (session) setCsrfToken(session.csrfToken);
        setState(session ? { kind: 'in', session } : { kind: 'none' });
      },
      (error: unknown) => gen === generation.current && setState({ kind: 'error', error }),
    );
  }, []);

  useEffect(load, [load]);

  const signedIn = useCallback((session: SessionInfo) => {
    generation.current++;
    setCsrfToken(session.csrfToken);
    setState({ kind: 'in', session });
  }, []);

  const signOut = useCallback(async () => {
    try {
      await post(apiPaths.signOut, {});
    } catch {
      // Signed out either way: the cookie is the server's, and the UI forgets the session.
    }
    generation.current++;
    closeStreams();
    setCsrfToken('');
    setState({ kind: 'none' });
    navigate('/signin', { replace: true });
  }, []);

  useEffect(() => {
    setOnUnauthenticated(() => {
      closeStreams();
      setState({ kind: 'none' });
    });
  }, []);

  const onSignIn = match('/signin', loc.path) !== undefined;

  // Signed out anywhere but the sign-in page: go there, and come back afterwards.
  useEffect(() => {
    if (state.kind === 'none' && !onSignIn) {
      const next = loc.path === '/' ? '' : `?next=${encodeURIComponent(loc.href)}`;
      navigate(`/signin${next}`, { replace: true });
    }
  }, [state.kind, onSignIn, loc.path, loc.href]);

  if (onSignIn) {
    return <SignInView session={state.kind === 'in' ? state.session : null} onSignedIn={signedIn} />;
  }
  if (state.kind === 'loading' || state.kind === 'none') return <Loading what="the console" />;
  if (state.kind === 'error') {
    return (
      <main>
        <ErrorAlert error={state.error} title="The console could not load your session" onRetry={load} />
      </main>
    );
  }
  return (
    <>
      <SignedIn session={state.session} path={loc.path} toast={toast} onSignOut={() => void signOut()} />
      <Toasts items={toasts} />
    </>
  );
}

function SignedIn({ session, path, toast, onSignOut }: { session: SessionInfo; path: string; toast: Ctx['toast']; onSignOut: () => void }) {
  const first = session.tenants[0];
  const tenantMatch = match('/t/:tenant', path) ?? match('/t/:tenant/:view', path) ?? match('/t/:tenant/runs/:runId', path);
  const tenant = tenantMatch?.['tenant'];

  useEffect(() => {
    if (path === '/' || (tenant !== undefined && match('/t/:tenant', path))) {
      if (first || tenant) navigate(`/t/${encodeURIComponent(tenant ?? first ?? '')}/runs`, { replace: true });
    }
  }, [path, first, tenant]);

  const ctx = useMemo<Ctx | null>(() => (tenant ? { session, tenant, toast } : null), [session, tenant, toast]);

  if (!first) {
    return (
      <Shell session={session} tenant={undefined} onSignOut={onSignOut}>
        <ErrorAlert error={{ message: 'Your account has no tenants yet. Ask an administrator to grant you one.' }} />
      </Shell>
    );
  }
  if (!tenant || !ctx) {
    if (path === '/') return <Loading what="the console" />;
    return (
      <Shell session={session} tenant={first} onSignOut={onSignOut}>
        <NotFound />
      </Shell>
    );
  }
  if (!session.tenants.includes(tenant)) {
    return (
      <Shell session={session} tenant={first} onSignOut={onSignOut}>
        <div className="alert" role="alert" data-testid="error">
          <div>
            You have no access to the tenant <code>{tenant}</code>. Your tenants:{' '}
            {session.tenants.map((t, i) => (
              <span key={t}>
                {i > 0 ? ', ' : ''}
                <Link to={`/t/${encodeURIComponent(t)}/runs`}>{t}</Link>
              </span>
            ))}
            .
          </div>
        </div>
      </Shell>
    );
  }

  let view: ReactNode;
  let m: Record<string, string> | undefined;
  if (match('/t/:tenant/runs', path)) view = <RunsView />;
  else if ((m = match('/t/:tenant/runs/:runId', path))) view = <RunView key={m['runId']} runId={m['runId'] ?? ''} />;
  else if (match('/t/:tenant/approvals', path)) view = <ApprovalsView />;
  else if (match('/t/:tenant/workers', path)) view = <WorkersView />;
  else if (match('/t/:tenant/audit', path)) view = <AuditView />;
  else if (match('/t/:tenant/policies', path)) view = <PoliciesView />;
  else if (match('/t/:tenant/triggers', path)) view = <TriggersView />;
  else if (match('/t/:tenant/start', path)) view = <StartRunView />;
  else if (match('/t/:tenant/datasync', path)) view = <DatasyncView />;
  else view = <NotFound />;

  return (
    <AppContext.Provider value={ctx}>
      <Shell session={session} tenant={tenant} onSignOut={onSignOut}>
        {view}
      </Shell>
    </AppContext.Provider>
  );
}

function NotFound() {
  return (
    <div className="card">
      <div className="empty" data-testid="not-found">
        <strong>There is no page here.</strong>
        <Link to="/">Go to the runs list</Link>
      </div>
    </div>
  );
}
