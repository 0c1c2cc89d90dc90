/**
 * Engine 3: engine 2's compiler, with the ids of the runs a run starts (children,
 * continuations) in the reserved space, where the intake lets only the orchestrator submit
 * (test/int/children.int.test.ts plays the attack). Engine 2's runs keep the ids they
 * recorded: a run replays through the engine its `run.started` names.
 */
import { describe, expect, it } from 'vitest';
import { childRunIdOf, continuedRunIdOf, createRegistry, CURRENT_ENGINE, defineWorkflow, foldRun, machineHelpers, MARKED_IDS_SINCE_ENGINE, startRun } from '@capstan/actors';
import { DERIVED_RUN_ID_MARK as API_MARK } from '@capstan/console';
import { derivedRunId, newRunId } from '@capstan/kit';
import { DERIVED_RUN_ID_MARK, isDerivedRunId, isRunId, makeRunId, markDerived, outsideDerivedSpace, runIdTime, type RunId, type TenantId } from '@capstan/schemas';
import { RUN_ID, RunRecorder } from './support/runs.js';

const parent = defineWorkflow({
  id: 'e3.parent',
  version: 1,
  steps: [
    { name: 'ship', child: 'e3.shipper', retry: { maxAttempts: 2, initialIntervalMs: 10 } },
    { name: 'again', continueAsNew: () => ({ round: 2 }) },
  ],
});

describe('engine 3 - derived run ids in the reserved space', () => {
  it('engine 3 - new runs get engine 3, which marks the ids it derives', () => {
    expect(CURRENT_ENGINE).toBe(3);
    expect(MARKED_IDS_SINCE_ENGINE).toBe(3);
    const child = childRunIdOf(RUN_ID, 'ship', 1);
    expect(child).toBe(childRunIdOf(RUN_ID, 'ship', 1, 3));
    expect(isRunId(child)).toBe(true);
    expect(isDerivedRunId(child)).toBe(true);
    expect(child.slice(10, 14)).toBe(DERIVED_RUN_ID_MARK);
    expect(runIdTime(child)).toBe(runIdTime(RUN_ID));
    expect(isDerivedRunId(continuedRunIdOf(RUN_ID))).toBe(true);
    // 60 bits of hash are left: the ids of one parent's attempts, steps and continuation still differ.
    const ids = [child, childRunIdOf(RUN_ID, 'ship', 2), childRunIdOf(RUN_ID, 'ship-1', 1), continuedRunIdOf(RUN_ID), continuedRunIdOf(child)];
    expect(new Set(ids).size).toBe(5);
  });

  it('engine 3 - each engine derives the ids its recorded runs named', () => {
    // From test/fixtures/histories/engine-2/test-parent-completed.jsonl and test-ticker-continued.jsonl.
    expect(childRunIdOf('01M8Y46GZPZRVTVVJBC7D09P9Q', 'ship', 1, 2)).toBe('01M8Y46GZP3YCMXS95RKQ85EJN');
    expect(childRunIdOf('01M8Y46GZPZRVTVVJBC7D09P9Q', 'notify', 1, 2)).toBe('01M8Y46GZPCK4DZZAS8783HAE7');
    expect(isDerivedRunId(childRunIdOf(RUN_ID, 'ship', 1, 2))).toBe(false);
    // And engine 3 as its recorded runs named them (test/fixtures/histories/engine-3/test-parent-completed.jsonl).
    expect(childRunIdOf('01M8YSNTZG3C1Q5TVA1TP3KSZB', 'ship', 1, 3)).toBe('01M8YSNTZGCAPSQFJTGTAZQ8GM');
    expect(childRunIdOf('01M8YSNTZG3C1Q5TVA1TP3KSZB', 'notify', 1, 3)).toBe('01M8YSNTZGCAPSQ3K2JETPYMAF');
    expect(isDerivedRunId(continuedRunIdOf(RUN_ID, 2))).toBe(false);
  });

  it('engine 3 - a run recorded under engine 3 starts its child and its continuation under marked ids, and replays; the same run under engine 2 does not mark them', () => {
    for (const engine of [2, 3] as const) {
      const r = new RunRecorder(parent, {}, RUN_ID, undefined, engine);
      expect(r.state.engine).toBe(engine);
      const started = r.events.at(-1);
      expect(started).toMatchObject({ type: 'child.started', data: { step: 'ship', attempt: 1, child: childRunIdOf(RUN_ID, 'ship', 1, engine) } });
      r.apply({ type: 'child.completed', data: { step: 'ship', attempt: 1, child: childRunIdOf(RUN_ID, 'ship', 1, engine), result: { ok: true } } });
      const continued = r.events.find((e) => e.type === 'run.continued');
      expect(continued?.data).toMatchObject({ next: continuedRunIdOf(RUN_ID, engine) });
      expect(isDerivedRunId((continued?.data as { next: string }).next)).toBe(engine === 3);
      expect(r.events.at(-1)).toMatchObject({ type: 'run.completed', data: { output: { continuedAs: continuedRunIdOf(RUN_ID, engine) } } });
      const fold = foldRun(createRegistry([parent]), r.events);
      expect(fold.state.engine).toBe(engine);
      expect(fold.state.snapshot.context).toEqual(r.state.snapshot.context);
    }
  });

  it('engine 3 - a hand-written machine is told its engine on start as well', () => {
    const h = machineHelpers('e3.hand');
    const hand = defineWorkflow({ id: 'e3.hand', version: 1, machine: h.machine({ initial: 'ship', states: { ship: h.child({ name: 'ship', child: 'e3.shipper' }, 'done') } }) });
    for (const engine of [2, 3] as const) {
      const d = startRun(hand, { workflow: hand.id, version: 1, input: {}, engine }, RUN_ID);
      expect(d.decisions[0]).toMatchObject({ type: 'child.started', data: { child: childRunIdOf(RUN_ID, 'ship', 1, engine) } });
    }
  });
});

describe('engine 3 - the reserved space', () => {
  it('ids - the platform never makes a client id in the reserved space, and a derived submit id steps out of it', () => {
    for (let i = 0; i < 2000; i++) expect(isDerivedRunId(newRunId())).toBe(false);
    const marked = markDerived(makeRunId(1_700_000_000_000, new Uint8Array(10)) as RunId);
    expect(isDerivedRunId(marked)).toBe(true);
    const out = outsideDerivedSpace(marked);
    expect(isRunId(out)).toBe(true);
    expect(isDerivedRunId(out)).toBe(false);
    expect(outsideDerivedSpace(out)).toBe(out);
    // The submit-derived id is unchanged outside the space (redelivered submits keep their ids).
    const t = 'acme' as TenantId;
    const id = derivedRunId(t, 7, 1_700_000_000_000);
    expect(isDerivedRunId(id)).toBe(false);
    expect(derivedRunId(t, 7, 1_700_000_000_000)).toBe(id);
  });

  it("ids - the console's browser code spells the same mark", () => {
    expect(API_MARK).toBe(DERIVED_RUN_ID_MARK);
  });
});
