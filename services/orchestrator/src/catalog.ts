/**
 * The workflow catalog: which workflows this orchestrator has registered, answered on
 * `cap.<t>.svc.workflows.list` for every tenant it serves (queue group `orchestrator`, so one
 * instance answers). The console's "Run now" lists them and builds an input form from a
 * workflow's JSON Schema when it has one.
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Registry, WorkflowDefinition } from '@capstan/actors';
import { encode, isPlainObject, Subjects, type JsonValue, type TenantId } from '@capstan/schemas';
import type { Logger, WorkflowInfo } from '@capstan/kit';

type JsonObject = { readonly [k: string]: JsonValue };

/**
 * A workflow's input as a JSON Schema, when its definition carries one: a plain
 * `inputSchema` object, or an `input` Standard Schema that can describe itself as JSON
 * Schema (`~standard.jsonSchema.input()`, the Standard JSON Schema interface). The one seam
 * between input validation and the forms built from it; anything else gives no schema, and
 * the form falls back to a JSON editor.
 */
export function inputSchemaOf(def: WorkflowDefinition): JsonObject | undefined {
  const d = def as { inputSchema?: unknown; input?: unknown };
  if (isPlainObject(d.inputSchema)) return d.inputSchema as JsonObject;
  const std =
    isPlainObject(d.input) || typeof d.input === 'object'
      ? (d.input as { '~standard'?: { jsonSchema?: { input?: (o: { target: string }) => unknown } } } | null)?.['~standard']
      : undefined;
  const describe = std?.jsonSchema?.input;
  if (typeof describe !== 'function') return undefined;
  try {
    const out = describe({ target: 'draft-2020-12' });
    return isPlainObject(out) ? (JSON.parse(JSON.stringify(out)) as JsonObject) : undefined;
  } catch {
    return undefined;
  }
}

export function catalogOf(registry: Registry): WorkflowInfo[] {
  const byId = new Map<string, WorkflowDefinition[]>();
  for (const def of registry.list()) byId.set(def.id, [...(byId.get(def.id) ?? []), def]);
  return [...byId.entries()]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([id, defs]) => {
      const latest = registry.latest(id);
      const inputSchema = inputSchemaOf(latest);
      return {
        id,
        version: latest.version,
        versions: defs.map((d) => d.version).sort((a, b) => a - b),
        steps: (latest.steps ?? []).map((s) => s.name),
        searchKeys: [...latest.searchKeys],
        ...(inputSchema ? { inputSchema } : {}),
      };
    });
}

export function serveCatalog(nc: NatsConnection, t: TenantId, registry: Registry, log: Logger): Subscription {
  const answer = encode({ workflows: catalogOf(registry) });
  return nc.subscribe(Subjects.workflowCatalog(t), {
    queue: 'orchestrator',
    callback: (err, msg) => {
      if (err) return log.warn({ err, tenant: t }, 'workflow catalog subscription failed');
      msg.respond(answer);
    },
  });
}
