/**
 * Failpoints for fault tests: named places in a service where a test can make the process
 * die or freeze, to prove that every crash window is safe. Off unless `CAPSTAN_FAILPOINTS` is set:
 *
 *   CAPSTAN_FAILPOINTS="projector.after_commit_before_ack:kill:0.1,projector.before_commit:kill:0.05"
 *
 * Each entry is `name:action:probability`. `kill`: SIGKILL, as a crash would (no cleanup, no
 * flushing). `stall`: the whole process freezes for `CAPSTAN_FAILPOINT_STALL_MS` (default
 * 5000), once, as a long GC pause or a SIGSTOP at exactly that place would (timers do not
 * run either). The variables are read once, on the first failpoint hit.
 */
import { writeSync } from 'node:fs';

export interface Failpoint {
  readonly action: 'kill' | 'stall';
  readonly probability: number;
}

const ENTRY = /^([a-z0-9][a-z0-9._-]*):(kill|stall):([0-9]*\.?[0-9]+)$/;

/** Parses a failpoint list; every malformed entry is added to `problems` and skipped. */
export function parseFailpoints(raw: string | undefined, problems: string[] = []): ReadonlyMap<string, Failpoint> {
  const out = new Map<string, Failpoint>();
  for (const part of (raw ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const m = ENTRY.exec(part);
    const probability = Number(m?.[3]);
    if (!m || !(probability >= 0 && probability <= 1)) {
      problems.push(`CAPSTAN_FAILPOINTS has an invalid entry ${JSON.stringify(part)} (expected name:kill|stall:probability, probability in [0, 1])`);
      continue;
    }
    out.set(m[1] as string, { action: m[2] as 'kill' | 'stall', probability });
  }
  return out;
}

let table: ReadonlyMap<string, Failpoint> | undefined;
const stalled = new Set<string>();

/** Dies here with the configured probability; a no-op for names not configured. */
export function failpoint(name: string): void {
  table ??= parseFailpoints(process.env['CAPSTAN_FAILPOINTS']);
  const fp = table.get(name);
  if (!fp || Math.random() >= fp.probability) return;
  if (fp.action === 'stall') {
    if (stalled.has(name)) return;
    stalled.add(name);
    const ms = Number(process.env['CAPSTAN_FAILPOINT_STALL_MS'] ?? 5000);
    writeSync(2, `failpoint ${name}: stall ${ms} ms\n`);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
    return;
  }
  // Said on stderr first (a synchronous write) so a test can tell these deaths from its own kills.
  writeSync(2, `failpoint ${name}: SIGKILL\n`);
  process.kill(process.pid, 'SIGKILL');
}
