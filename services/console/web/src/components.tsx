/** Small building blocks shared by every view. */
import { createContext, useCallback, useContext, useEffect, useId, useRef, useState, type AnchorHTMLAttributes, type ReactNode, type MouseEvent } from 'react';
import type { SessionInfo } from '../../src/api-types.js';
import { describeError } from './api.js';
import { ago, when } from './format.js';
import { isPlainClick, navigate } from './router.js';
import { useNow } from './hooks.js';

// ---------------------------------------------------------------------------------------
// Session and toasts, for every view below the shell.

export interface Ctx {
  readonly session: SessionInfo;
  readonly tenant: string;
  readonly toast: (text: string, kind?: 'info' | 'error') => void;
}

export const AppContext = createContext<Ctx | null>(null);

export function useApp(): Ctx {
  const c = useContext(AppContext);
  if (!c) throw new Error('useApp outside the signed-in shell');
  return c;
}

export interface Toast {
  readonly id: number;
  readonly text: string;
  readonly kind: 'info' | 'error';
}

export function Toasts({ items }: { items: readonly Toast[] }) {
  return (
    <div className="toasts" role="status" aria-live="polite" data-testid="toasts">
      {items.map((t) => (
        <div key={t.id} className="toast" data-kind={t.kind}>
          {t.text}
        </div>
      ))}
    </div>
  );
}

export function useToasts(): [readonly Toast[], (text: string, kind?: 'info' | 'error') => void] {
  const [items, setItems] = useState<Toast[]>([]);
  const next = useRef(1);
  const push = useCallback((text: string, kind: 'info' | 'error' = 'info') => {
    const id = next.current++;
    setItems((xs) => [...xs.slice(-3), { id, text, kind }]);
    setTimeout(() => setItems((xs) => xs.filter((x) => x.id !== id)), kind === 'error' ? 8000 : 4000);
  }, []);
  return [items, push];
}

// ---------------------------------------------------------------------------------------

export type LinkProps = Omit<AnchorHTMLAttributes<HTMLAnchorElement>, 'href'> & { to: string; [data: `data-${string}`]: string | undefined };

export function Link(props: LinkProps) {
  const { to, children, onClick: outer, ...rest } = props;
  const onClick = (e: MouseEvent<HTMLAnchorElement>) => {
    outer?.(e);
    if (!isPlainClick(e)) return;
    e.preventDefault();
    navigate(to);
  };
  return (
    <a href={to} onClick={onClick} {...rest}>
      {children}
    </a>
  );
}

/** A status pill; `tone` picks the colour when it differs from the status word. */
export function StatusBadge({ status, tone, testid }: { status: string; tone?: string; testid?: string }) {
  return (
    <span className={`status status-${(tone ?? status).replace(/[^a-z-]/g, '')}`} data-testid={testid ?? 'status'} data-status={status}>
      {status}
    </span>
  );
}

/** A relative time ("3 min ago") that shows the exact local time on hover. */
export function Ago({ at }: { at: string | null | undefined }) {
  // The tick only re-renders; the time itself is read now, so fresh data never looks older or newer.
  useNow();
  if (!at) return <span className="muted">–</span>;
  return (
    <time dateTime={at} title={when(at)}>
      {ago(at, Date.now())}
    </time>
  );
}

/** A server message as a sentence: capital first letter, final full stop. */
function sentence(m: string): string {
  const t = m.trim();
  if (!t) return t;
  const first = t.charAt(0).toUpperCase() + t.slice(1);
  return /[.!?)]$/.test(first) ? first : `${first}.`;
}

export function ErrorAlert({ error, onRetry, title }: { error: unknown; onRetry?: () => void; title?: string }) {
  const { code, message } = describeError(error);
  return (
    <div className="alert" role="alert" data-testid="error">
      <div>
        {title ? <strong>{title}: </strong> : null}
        {title ? message : sentence(message)} <code className="muted">({code})</code>
      </div>
      {onRetry ? (
        <button type="button" className="btn btn-sm" onClick={onRetry}>
          Try again
        </button>
      ) : null}
    </div>
  );
}

export function Loading({ what }: { what: string }) {
  return (
    <div className="loading" role="status" data-testid="loading">
      Loading {what}…
    </div>
  );
}

export function Empty({ title, children, testid }: { title: string; children?: ReactNode; testid?: string }) {
  return (
    <div className="empty" data-testid={testid ?? 'empty'}>
      <strong>{title}</strong>
      {children}
    </div>
  );
}

// ---------------------------------------------------------------------------------------
// Confirmation: a modal <dialog> (focus moves into it and returns on close; Escape cancels).

export interface ConfirmOptions {
  readonly title: string;
  readonly body: ReactNode;
  readonly confirm: string;
  readonly danger?: boolean;
  /** Ask for a reason (optional text) to send with the action. */
  readonly reason?: { label: string; placeholder?: string };
  /** Ask for a required text value (a signal name, …). */
  readonly input?: { label: string; placeholder?: string; initial?: string };
}

export interface ConfirmResult {
  readonly reason: string;
  readonly input: string;
}

export function useConfirm(): [ReactNode, (o: ConfirmOptions) => Promise<ConfirmResult | null>] {
  const [pending, setPending] = useState<{ o: ConfirmOptions; resolve: (r: ConfirmResult | null) => void } | null>(null);
  const ask = useCallback((o: ConfirmOptions) => new Promise<ConfirmResult | null>((resolve) => setPending({ o, resolve })), []);
  const node = pending ? (
    <ConfirmDialog
      options={pending.o}
      onDone={(r) => {
        pending.resolve(r);
        setPending(null);
      }}
    />
  ) : null;
  return [node, ask];
}

function ConfirmDialog({ options, onDone }: { options: ConfirmOptions; onDone: (r: ConfirmResult | null) => void }) {
  const ref = useRef<HTMLDialogElement>(null);
  const id = useId();
  const [reason, setReason] = useState('');
  const [input, setInput] = useState(options.input?.initial ?? '');
  const done = useRef(false);
  const finish = (r: ConfirmResult | null) => {
    if (done.current) return;
    done.current = true;
    ref.current?.close();
    onDone(r);
  };
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (!d.open) d.showModal();
    // The safe choice has focus first for destructive actions; a text field otherwise.
    d.querySelector<HTMLElement>('[data-autofocus]')?.focus();
  }, []);
  return (
    <dialog ref={ref} aria-labelledby={`${id}-t`} onClose={() => finish(null)} data-testid="confirm-dialog">
      <form
        method="dialog"
        onSubmit={(e) => {
          e.preventDefault();
          if (options.input && !input.trim()) return;
          finish({ reason: reason.trim(), input: input.trim() });
        }}
      >
        <h2 id={`${id}-t`}>{options.title}</h2>
        <p>{options.body}</p>
        {options.input ? (
          <div className="field">
            <label htmlFor={`${id}-i`}>{options.input.label}</label>
            <input
              id={`${id}-i`}
              type="text"
              required
              value={input}
              placeholder={options.input.placeholder}
              onChange={(e) => setInput(e.target.value)}
              data-autofocus
              data-testid="confirm-input"
            />
          </div>
        ) : null}
        {options.reason ? (
          <div className="field">
            <label htmlFor={`${id}-r`}>{options.reason.label}</label>
            <input
              id={`${id}-r`}
              type="text"
              value={reason}
              placeholder={options.reason.placeholder}
              onChange={(e) => setReason(e.target.value)}
              data-autofocus={options.input ? undefined : true}
              data-testid="confirm-reason"
            />
          </div>
        ) : null}
        <div className="actions">
          <button type="button" className="btn" onClick={() => finish(null)} data-autofocus={options.input || options.reason ? undefined : true} data-testid="confirm-keep">
            Keep as is
          </button>
          <button type="submit" className={`btn ${options.danger ? 'btn-danger-solid' : 'btn-primary'}`} data-testid="confirm-ok">
            {options.confirm}
          </button>
        </div>
      </form>
    </dialog>
  );
}

/** A button for an action the session's role may not perform: disabled, and saying why. */
export function RoleNote({ allowed, need }: { allowed: boolean; need: string }) {
  if (allowed) return null;
  return <span className="hint">Needs the {need} role.</span>;
}

/** A table's header row: plain column titles, or `{ srOnly }` for a column named only for screen readers. */
export function TableHead({ columns }: { columns: readonly (string | { srOnly: string })[] }) {
  return (
    <thead>
      <tr>
        {columns.map((c) =>
          typeof c === 'string' ? (
            <th scope="col" key={c}>
              {c}
            </th>
          ) : (
            <th scope="col" key={c.srOnly}>
              <span className="sr-only">{c.srOnly}</span>
            </th>
          ),
        )}
      </tr>
    </thead>
  );
}
