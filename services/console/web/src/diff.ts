/**
 * A line diff by longest common subsequence: small and exact, for texts of a few thousand
 * lines (a policy). Quadratic in lines, so a pair past MAX_DIFF_CELLS is refused rather than
 * freezing the tab.
 */

export type DiffOp = 'same' | 'add' | 'del';

export interface DiffLine {
  readonly op: DiffOp;
  readonly text: string;
  /** Line number in the old text (same, del) and in the new text (same, add). */
  readonly oldNo: number | null;
  readonly newNo: number | null;
}

export const MAX_DIFF_CELLS = 4_000_000;

export function splitLines(text: string): string[] {
  if (text === '') return [];
  const lines = text.split(/\r?\n/);
  // A final newline ends the last line; it does not start an empty one.
  if (lines.at(-1) === '') lines.pop();
  return lines;
}

/** The lines of `a` and `b` as kept, removed and added, in order; null when too large to diff. */
export function lineDiff(a: string, b: string): DiffLine[] | null {
  const x = splitLines(a);
  const y = splitLines(b);
  // Equal heads and tails need no table: they are most of a typical change.
  let head = 0;
  while (head < x.length && head < y.length && x[head] === y[head]) head++;
  let tail = 0;
  while (tail < x.length - head && tail < y.length - head && x[x.length - 1 - tail] === y[y.length - 1 - tail]) tail++;
  const xs = x.slice(head, x.length - tail);
  const ys = y.slice(head, y.length - tail);
  const n = xs.length;
  const m = ys.length;
  if ((n + 1) * (m + 1) > MAX_DIFF_CELLS) return null;

  // lcs[i][j]: length of the LCS of xs[i..] and ys[j..], one flat array.
  const w = m + 1;
  const lcs = new Uint32Array((n + 1) * w);
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i * w + j] = xs[i] === ys[j] ? (lcs[(i + 1) * w + j + 1] as number) + 1 : Math.max(lcs[(i + 1) * w + j] as number, lcs[i * w + j + 1] as number);
    }
  }

  const out: DiffLine[] = [];
  for (let k = 0; k < head; k++) out.push({ op: 'same', text: x[k] as string, oldNo: k + 1, newNo: k + 1 });
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && xs[i] === ys[j]) {
      out.push({ op: 'same', text: xs[i] as string, oldNo: head + i + 1, newNo: head + j + 1 });
      i++;
      j++;
    } else if (i < n && (j >= m || (lcs[(i + 1) * w + j] as number) >= (lcs[i * w + j + 1] as number))) {
      // Removals before additions, as a reader of diffs expects.
      out.push({ op: 'del', text: xs[i] as string, oldNo: head + i + 1, newNo: null });
      i++;
    } else {
      out.push({ op: 'add', text: ys[j] as string, oldNo: null, newNo: head + j + 1 });
      j++;
    }
  }
  for (let k = 0; k < tail; k++) {
    const oi = x.length - tail + k;
    const ni = y.length - tail + k;
    out.push({ op: 'same', text: x[oi] as string, oldNo: oi + 1, newNo: ni + 1 });
  }
  return out;
}
