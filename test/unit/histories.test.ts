/**
 * Recorded histories replay forever. Every file under test/fixtures/histories/engine-<N>/ is
 * a run recorded on real servers by an earlier build (test/record/histories.record.ts); each
 * must still fold, decision for decision, through today's build: the engine version its
 * `run.started` names (none: engine 1) and the workflow version it ran. A compiler change
 * that alters what an old run decides fails here. The tampered history must be refused.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createRegistry, foldRun, runStatus, statusFromEvents } from '@capstan/actors';
import { CapstanError, encode, ErrorCode, INPUT_EVENT_TYPES, parseRunEvent, type DeterminismViolationError, type RunEvent } from '@capstan/schemas';
import { projectRun } from '@capstan/projector';
import { workflows } from '../fixtures/workflows.js';

const HISTORIES = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..', 'test', 'fixtures', 'histories');
const registry = createRegistry(workflows);

/** Reads a history as the orchestrator reads a stream: every event validated on decode. */
function readHistory(file: string): RunEvent[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => parseRunEvent(JSON.parse(line)));
}

const engines = readdirSync(HISTORIES)
  .filter((d) => /^engine-\d+$/.test(d))
  .map((d) => ({ engine: Number(d.slice('engine-'.length)), dir: join(HISTORIES, d) }));
const histories = engines.flatMap(({ engine, dir }) =>
  readdirSync(dir)
    .filter((f) => f.endsWith('.jsonl'))
    .map((f) => ({ engine, name: f.replace(/\.jsonl$/, ''), file: join(dir, f) })),
);

describe('histories - recorded runs replay under this build', () => {
  it('histories - there are recorded runs for engine 1', () => {
    const counts = engines.map(({ engine }) => `engine ${engine}: ${histories.filter((x) => x.engine === engine).length}`);
    process.stdout.write(`recorded histories: ${histories.length} (${counts.join(', ')})\n`);
    expect(histories.filter((x) => x.engine === 1).length).toBeGreaterThanOrEqual(18);
  });

  it.each(histories.map((x) => [`engine ${x.engine} ${x.name}`, x] as const))('histories - %s folds decision for decision', (_, x) => {
    const events = readHistory(x.file);
    const first = events[0];
    expect(first?.type).toBe('run.started');
    // The engine a run recorded decides how it replays; a run that names none is engine 1.
    const recorded = first?.type === 'run.started' ? ((first.data as { engine?: number }).engine ?? 1) : 0;
    expect(recorded).toBe(x.engine);
    const fold = foldRun(registry, events);
    expect(fold.state.seq).toBe(events.length);
    // One timeline entry per recorded input, each followed by exactly the decisions recorded after it.
    expect(fold.timeline.map((e) => e.seq)).toEqual(events.filter((e) => INPUT_EVENT_TYPES.has(e.type)).map((e) => e.seq));
    // The status readers without the registry see agrees with the machine's.
    expect(runStatus(fold.state)).toBe(statusFromEvents(events));
  });

  it.each(histories.map((x) => [`engine ${x.engine} ${x.name}`, x] as const))('histories - %s projects with no approval left waiting once the run has ended', (_, x) => {
    const events = readHistory(x.file);
    const { view } = projectRun(
      'hist',
      events.map((event, i) => ({ event, streamSeq: i + 1, bytes: encode(event) })),
    );
    const ended = ['completed', 'failed', 'cancelled'].includes(statusFromEvents(events));
    const waiting = [...view.approvals.values()].filter((a) => a.status === 'waiting').map((a) => a.step);
    // A run that has ended can be asked nothing: the console's approvals list must not offer it.
    expect(ended ? waiting : [], x.name).toEqual([]);
  });

  it('histories - the tampered history (a decision edited after the fact) is refused with a precise diff', () => {
    const events = readHistory(join(HISTORIES, 'tampered', 'demo-pipeline-timeout-edited.jsonl'));
    let error: unknown;
    try {
      foldRun(registry, events);
    } catch (e) {
      error = e;
    }
    expect(CapstanError.is(error) && error.code).toBe(ErrorCode.DeterminismViolation);
    const diff = (error as DeterminismViolationError).diff;
    process.stdout.write(`tampered history refused: ${diff.join('; ')}\n`);
    expect(diff).toEqual(['seq 4 step.scheduled: data.timeoutMs: recorded 45000, replay 30000']);
  });
});
