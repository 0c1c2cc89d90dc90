/**
 * Sign-in: user id and password, or the landing of a one-time sign-in link
 * (`/signin?token=…`), which signs in at once and takes the token out of the address bar.
 */
import { useEffect, useRef, useState, type FormEvent } from 'react';
import { apiPaths, type SessionInfo } from '../../../src/api-types.js';
import { post } from '../api.js';
import { ErrorAlert } from '../components.js';
import { navigate, useLocation, useTitle } from '../router.js';

/** Only paths of this console: a `next` of another origin would make the page an open redirect. */
function safeNext(raw: string | null): string {
  if (!raw || !raw.startsWith('/') || raw.startsWith('//') || raw.startsWith('/\\') || raw.startsWith('/signin')) return '/';
  return raw;
}

export function SignInView({ session, onSignedIn }: { session: SessionInfo | null; onSignedIn: (s: SessionInfo) => void }) {
  useTitle('Sign in');
  const loc = useLocation();
  const next = safeNext(loc.query.get('next'));
  const token = loc.query.get('token');
  const [userId, setUserId] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [linkState, setLinkState] = useState<'idle' | 'working' | 'failed'>(token ? 'working' : 'idle');
  const used = useRef(false);
  const passwordRef = useRef<HTMLInputElement>(null);

  useEffect(() => {
    if (!token || used.current) return;
    used.current = true;
    // The token is single use; keep it out of the history and of anything copied from the bar.
    history.replaceState(null, '', `/signin${next !== '/' ? `?next=${encodeURIComponent(next)}` : ''}`);
    post<SessionInfo>(apiPaths.linkSignIn, { token }).then(
      (s) => {
        onSignedIn(s);
        navigate(next, { replace: true });
      },
      (e: unknown) => {
        setError(e);
        setLinkState('failed');
      },
    );
  }, [token, next, onSignedIn]);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const s = await post<SessionInfo>(apiPaths.signIn, { userId: userId.trim(), password });
      onSignedIn(s);
      navigate(next, { replace: true });
    } catch (err) {
      setError(err);
      setPassword('');
      setBusy(false);
      passwordRef.current?.focus();
    }
  };

  return (
    <div className="signin">
      <div className="card" data-testid="signin">
        <span className="brand" style={{ color: 'var(--text)' }}>
          <span className="brand-mark" aria-hidden="true">
            C
          </span>
          Capstan
        </span>
        <h1>Sign in to the console</h1>
        {session ? (
          <p className="hint">
            You are signed in as <strong>{session.userId}</strong>.{' '}
            <a
              href={next}
              onClick={(e) => {
                e.preventDefault();
                navigate(next);
              }}
            >
              Continue
            </a>
          </p>
        ) : null}
        {linkState === 'working' ? (
          <p className="loading" data-testid="link-signin">
            Signing you in with your link…
          </p>
        ) : (
          <form onSubmit={(e) => void submit(e)} noValidate>
            {error ? (
              <ErrorAlert error={error} title={linkState === 'failed' ? 'That sign-in link does not work (links work once and expire after a few minutes)' : undefined} />
            ) : null}
            <div className="field">
              <label htmlFor="userId">User</label>
              <input id="userId" name="username" autoComplete="username" value={userId} onChange={(e) => setUserId(e.target.value)} autoFocus required data-testid="signin-user" />
            </div>
            <div className="field">
              <label htmlFor="password">Password</label>
              <input
                id="password"
                ref={passwordRef}
                type="password"
                name="password"
                autoComplete="current-password"
                value={password}
                onChange={(e) => setPassword(e.target.value)}
                required
                data-testid="signin-password"
              />
            </div>
            <button type="submit" className="btn btn-primary" disabled={busy || !userId.trim() || !password} data-testid="signin-submit">
              {busy ? 'Signing in…' : 'Sign in'}
            </button>
            <p className="hint">
              Running <code>capstan dev</code>? It prints a one-time sign-in link for the local admin.
            </p>
          </form>
        )}
      </div>
    </div>
  );
}
