/**
 * CLI agent adapters (mode 3): how to start an agent inside the tool runner, which env it
 * needs, and where it leaves its work. An agent writes only under `/workspace/out`, which
 * the service collects like any step's artifacts.
 */
import { CapstanError, ErrorCode, type SandboxSpec } from '@capstan/schemas';

export interface AgentAdapter {
  /** argv that runs the agent on a task file (relative to /workspace). */
  readonly command: (taskFile: string) => readonly string[];
  /** Env names the agent cannot work without: from `sandbox.env` or `sandbox.secrets`. */
  readonly needs: readonly string[];
}

export const AGENTS: Readonly<Record<string, AgentAdapter>> = {
  /** A small agent shipped in the image: an OpenAI-compatible chat loop with a `write_file` tool. */
  mini: {
    command: (task) => ['node', '/opt/capstan/agents/mini-agent.js', '--task', task],
    needs: ['OPENAI_BASE_URL', 'OPENAI_API_KEY'],
  },
};

export const TASK_FILE = 'task.md';

/** @throws CapstanError when the adapter is unknown or its env is not provided. */
export function agentCommand(spec: SandboxSpec, envNames: readonly string[], secretNames: readonly string[]): { argv: string[]; taskFile: string } {
  const adapter = spec.agent ? AGENTS[spec.agent] : undefined;
  if (!adapter) throw new CapstanError(ErrorCode.InvalidArgument, `unknown agent ${JSON.stringify(spec.agent ?? '')}; known: ${Object.keys(AGENTS).join(', ')}`, false);
  const have = new Set([...envNames, ...secretNames]);
  const missing = adapter.needs.filter((n) => !have.has(n));
  if (missing.length > 0) throw new CapstanError(ErrorCode.InvalidArgument, `agent ${spec.agent} needs ${missing.join(', ')} in sandbox.env or sandbox.secrets`, false);
  return { argv: [...adapter.command(TASK_FILE)], taskFile: TASK_FILE };
}
