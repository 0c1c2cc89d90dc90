/**
 * Engine 2's step compiler: a workflow's step tree becomes a run machine made of the
 * per-state builders in states.ts, one state per step. Loops give their steps' instances
 * the iteration as a suffix (`think-2`), so every use of a step has its own name, attempts
 * and timers.
 */
import type { NNode, WorkflowDefinition } from '../../workflow.js';
import type { KeyOf, RunContext } from './context.js';
import type { Extra } from './lifecycle.js';
import {
  branchState,
  childState,
  continueState,
  fanOutState,
  guardedState,
  loopState,
  parallelState,
  patchState,
  signalState,
  sleepState,
  taskState,
  workflowMachine,
  type Sequence,
} from './states.js';

/** A loop around a step: its name and the loops around it. */
interface Scope {
  readonly loops: readonly string[];
}

/** The instance name of a step inside the given loops: its name and each loop's current iteration. */
export function keyIn(name: string, loops: readonly string[]): KeyOf {
  if (loops.length === 0) return () => name;
  const loopKeys = loops.map((l, i) => keyIn(l, loops.slice(0, i)));
  return (c) => name + loopKeys.map((k) => `-${c.iter[k(c)] ?? 1}`).join('');
}

function extraIn(loops: readonly string[]): ((c: RunContext) => Extra) | undefined {
  const innermost = loops.at(-1);
  if (innermost === undefined) return undefined;
  const key = keyIn(innermost, loops.slice(0, -1));
  return (c) => ({ iteration: c.iter[key(c)] ?? 1 });
}

const stateOf = (n: NNode) => `step_${n.name}`;

/** Compiles a sequence of steps into states; the last one's `next` is `done`. */
export function compileSequence(workflowId: string, nodes: readonly NNode[], scope: Scope): Sequence {
  const states: Sequence['states'] = {};
  nodes.forEach((node, i) => {
    const after = nodes[i + 1];
    const next = after ? stateOf(after) : 'done';
    const keyOf = keyIn(node.name, scope.loops);
    // A step with a condition runs inside a check; its own next is then the check's end.
    const inner = node.when ? 'done' : next;
    const config = compileNode(workflowId, node, keyOf, inner, scope);
    states[stateOf(node)] = node.when ? guardedState(node.name, node.when, keyOf, config, next) : config;
  });
  const first = nodes[0];
  if (!first) throw new Error('a sequence needs a step');
  return { initial: stateOf(first), states };
}

function compileNode(workflowId: string, node: NNode, keyOf: KeyOf, next: string, scope: Scope) {
  const extra = extraIn(scope.loops);
  switch (node.kind) {
    case 'task':
      return taskState(workflowId, node, keyOf, next, extra);
    case 'signal':
      return signalState(node, keyOf, next, extra);
    case 'sleep':
      return sleepState(node, keyOf, next, extra);
    case 'fanout':
      return fanOutState(workflowId, node, keyOf, next, extra);
    case 'parallel':
      return parallelState(
        node.branches.map((b) => compileSequence(workflowId, b, scope)),
        next,
      );
    case 'branch':
      return branchState(node.test, keyOf, compileSequence(workflowId, node.then, scope), node.else.length > 0 ? compileSequence(workflowId, node.else, scope) : undefined, next);
    case 'loop':
      return loopState(node.until, node.max, keyOf, compileSequence(workflowId, node.body, { loops: [...scope.loops, node.name] }), next);
    case 'child':
      return childState(node, keyOf, next, extra);
    case 'continue':
      return continueState(node, keyOf);
    case 'patch':
      return patchState(node.patch, keyOf, compileSequence(workflowId, node.then, scope), node.else.length > 0 ? compileSequence(workflowId, node.else, scope) : undefined, next);
  }
}

/** Every step of the tree, by name. */
export function nodesByName(nodes: readonly NNode[]): Map<string, NNode> {
  const out = new Map<string, NNode>();
  const walk = (ns: readonly NNode[]) => {
    for (const n of ns) {
      out.set(n.name, n);
      if (n.kind === 'parallel') n.branches.forEach(walk);
      else if (n.kind === 'branch' || n.kind === 'patch') {
        walk(n.then);
        walk(n.else);
      } else if (n.kind === 'loop') walk(n.body);
    }
  };
  walk(nodes);
  return out;
}

/** The run machine of a workflow defined by steps. */
export function compileV2(def: Pick<WorkflowDefinition, 'id' | 'version' | 'nodes' | 'onEventCap' | 'continueInput'>) {
  const nodes = def.nodes ?? [];
  const byName = nodesByName(nodes);
  return workflowMachine(`${def.id}@${def.version}`, compileSequence(def.id, nodes, { loops: [] }), {
    signalOf: (name) => {
      const n = byName.get(name);
      return n?.kind === 'signal' ? n.signal : undefined;
    },
    maxAttemptsOf: (name) => maxAttemptsOf(byName.get(name)),
    ...(def.onEventCap === 'continue-as-new' ? { continueAtCap: def.continueInput ?? ((d) => d.input) } : {}),
  });
}

/** The attempts a step's retry policy allows (tasks, fan-out items, children). */
export function maxAttemptsOf(n: NNode | undefined): number | undefined {
  return n?.kind === 'task' || n?.kind === 'child' ? n.retry.maxAttempts : n?.kind === 'fanout' ? n.task.retry.maxAttempts : undefined;
}
