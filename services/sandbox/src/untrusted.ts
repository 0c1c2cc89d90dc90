/**
 * Text that comes out of a sandbox (a mode-3b request's reason, a tool runner's error, an
 * artifact's path, a host name asked for) is the step's to choose: it is bounded, stripped
 * of control and direction characters, and passed through the attempt's redactor before it
 * reaches an event, a log line or the audit log. Redaction runs on the whole string before
 * the cut, so a cut can never leave a prefix of a secret behind.
 */
/** Longest text of each kind kept from inside a sandbox (characters). */
export const TEXT_LIMITS = { reason: 500, message: 500, path: 1024, code: 64, host: 253 } as const;

/** Anything that hides identity values in a complete string (the attempt's `Redactor`). */
export interface TextRedactor {
  text(s: string): string;
}

// C0/C1 controls, line/paragraph separators and bidirectional overrides: nothing a log
// reader or a terminal should interpret.
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/** `value` as bounded, printable, redacted text. */
export function fromSandbox(value: unknown, max: number, redactor?: TextRedactor): string {
  let s = typeof value === 'string' ? value : value === undefined || value === null ? '' : printable(value);
  // Frames are capped, so this is bounded already; redact first, cut after.
  if (redactor) s = redactor.text(s);
  s = s.replace(UNPRINTABLE, '?');
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** `String(v)` that cannot throw (a hostile `toString`). */
function printable(v: unknown): string {
  try {
    return String(v);
  } catch {
    return `[${typeof v}]`;
  }
}
