/** Words and numbers for people: durations, relative times, absolute times. */

export function duration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '–';
  if (ms < 1) return '<1 ms';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 10) return `${s.toFixed(2)} s`;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

/** "12 s ago", "3 min ago", "2 h ago", "5 d ago"; future times say "in …". */
export function ago(iso: string | null | undefined, now: number): string {
  if (!iso) return '–';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  const d = now - t;
  const abs = Math.abs(d);
  let s: string;
  // A server clock a little ahead of this one must not read as "in 3 s".
  if (d > -60_000 && d < 5_000) return 'just now';
  if (abs < 60_000) s = `${Math.round(abs / 1000)} s`;
  else if (abs < 3_600_000) s = `${Math.round(abs / 60_000)} min`;
  else if (abs < 86_400_000) s = `${Math.round(abs / 3_600_000)} h`;
  else s = `${Math.round(abs / 86_400_000)} d`;
  return d >= 0 ? `${s} ago` : `in ${s}`;
}

const dateTime = new Intl.DateTimeFormat(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
const sameYear = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
const timeOnly = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });

/** Local date and time ("Mar 1, 12:00:03"; the year only when it is not this one). */
export function when(iso: string | null | undefined): string {
  if (!iso) return '–';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  return new Date(t).getFullYear() === new Date().getFullYear() ? sameYear.format(t) : dateTime.format(t);
}

export function clock(iso: string | null | undefined): string {
  if (!iso) return '–';
  const t = Date.parse(iso);
  return Number.isNaN(t) ? iso : timeOnly.format(t);
}

/** "+1.24 s" from `from` to `to`. */
export function offset(fromIso: string, toIso: string): string {
  const d = Date.parse(toIso) - Date.parse(fromIso);
  if (!Number.isFinite(d)) return '';
  return `+${duration(Math.max(0, d))}`;
}

const MODE_WORDS: Record<string, string> = {
  inline: 'inline (mode 0)',
  sandboxed: 'sandbox (mode 1)',
  'sandboxed-lease': 'sandbox + secrets (mode 2)',
  agent: 'agent (mode 3)',
};

export function modeLabel(mode: string): string {
  return MODE_WORDS[mode] ?? mode;
}

/** A run id shortened for tables; the full id stays in the link and its title. */
export function shortId(id: string): string {
  return id.length > 14 ? `${id.slice(0, 10)}…${id.slice(-4)}` : id;
}

export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}
