/**
 * The console's actions as NATS commands, through the same client the CLI uses: the
 * console never writes a projection. Every action is recorded with the signed-in user as
 * its author where the command carries one.
 *
 * Run decisions (approve, deny, retry, cancel) are signed with the console's own user in
 * the tenant (the service identity the registry names): the orchestrator records the
 * signed-in user the console states as `by`, the console's key as `signer`, and judges an
 * approval by the groups the console states for that user in that tenant (users.ts). The
 * console is the authority on who signed in to it, and only a console credential's word
 * for a user is heard.
 */
import { createClient, deleteEntity, previewQuery, putEntity, sendScheduleCommand, workflowCatalog, type Stored, type TenantAccess, type WorkflowInfo } from '@capstan/kit';
import {
  isPlainObject,
  parseTenantId,
  PIPELINE_WORKFLOW,
  type CatalogKind,
  type CatalogRecord,
  type JsonValue,
  type PipelineInput,
  type PreviewReply,
  type PreviewRequest,
  type RunId,
  type ScheduleCommand,
  type ScheduleRecord,
} from '@capstan/schemas';

export interface Author {
  readonly by: string;
  readonly reason?: string;
  /** The user's approver groups in the tenant (decisions only). */
  readonly groups?: readonly string[];
}

export interface Commands {
  cancel(tenant: string, runId: string, a: Author): Promise<void>;
  /** `by` is written into an object payload (or makes one): the audit log names the signal's author from it. */
  signal(tenant: string, runId: string, name: string, payload: JsonValue | undefined, a: Author): Promise<void>;
  retry(tenant: string, runId: string, a: Author): Promise<void>;
  approve(tenant: string, runId: string, step: string, a: Author): Promise<void>;
  deny(tenant: string, runId: string, step: string, a: Author): Promise<void>;
  approveWorker(tenant: string, workerId: string, a: Author): Promise<void>;
  revokeWorker(tenant: string, workerId: string, a: Author): Promise<void>;
  /** The workflows the orchestrators serving the tenant have registered. */
  workflows(tenant: string): Promise<WorkflowInfo[]>;
  /** Publishes a submit; resolves with the run id once JetStream has stored it. */
  start(tenant: string, workflow: string, input: { [k: string]: JsonValue }, runId?: RunId): Promise<RunId>;
  /** A schedule command, answered by the orchestrator (its record, or its refusal). */
  schedule(tenant: string, cmd: ScheduleCommand): Promise<Stored<ScheduleRecord>>;
  /** A pipeline run: a plain submit of `datasync.pipeline` with identifiers only. */
  runPipeline(tenant: string, input: PipelineInput): Promise<string>;
  putEntity(tenant: string, kind: CatalogKind, id: string, name: string | undefined, spec: JsonValue, a: Author): Promise<CatalogRecord>;
  deleteEntity(tenant: string, kind: CatalogKind, id: string, a: Author): Promise<CatalogRecord>;
  /** The bounded preview, asked of the tenant's datasync service. */
  preview(tenant: string, req: Omit<PreviewRequest, 'by'>, a: Author): Promise<PreviewReply>;
}

const withReason = (a: Author) => ({ by: a.by, ...(a.reason !== undefined ? { reason: a.reason } : {}) });

export async function createCommands(access: Pick<TenantAccess, 'tenant'>): Promise<Commands> {
  const client = await createClient(access);
  return {
    workflows: async (t) => workflowCatalog((await access.tenant(parseTenantId(t))).nc, parseTenantId(t)),
    start: (t, workflow, input, runId) => client.submit(t, workflow, { input, ...(runId ? { runId } : {}) }),
    schedule: async (t, cmd) => {
      const c = await access.tenant(parseTenantId(t));
      return sendScheduleCommand(c.js, c.jsm, parseTenantId(t), cmd);
    },
    async cancel(t, runId, a) {
      await client.cancel(t, runId, a.reason, a.by);
    },
    async signal(t, runId, name, payload, a) {
      const p: JsonValue = payload === undefined ? { by: a.by } : isPlainObject(payload) ? { ...payload, by: a.by } : payload;
      await client.signal(t, runId, name, p);
    },
    // Decisions wait for the orchestrator's verdict, so a refused one (already decided,
    // not failed) reaches the operator as an error rather than as a silent no-op.
    async retry(t, runId, a) {
      await client.retry(t, runId, withReason(a));
    },
    async approve(t, runId, step, a) {
      await client.approve(t, runId, step, { ...withReason(a), ...(a.groups?.length ? { groups: a.groups } : {}) });
    },
    async deny(t, runId, step, a) {
      await client.deny(t, runId, step, { ...withReason(a), ...(a.groups?.length ? { groups: a.groups } : {}) });
    },
    async approveWorker(t, workerId, a) {
      await client.approveWorker(t, workerId, withReason(a));
    },
    async revokeWorker(t, workerId, a) {
      await client.revokeWorker(t, workerId, withReason(a));
    },
    runPipeline: (t, input) => client.submit(t, PIPELINE_WORKFLOW, { input: { ...input } }),
    putEntity: async (t, kind, id, name, spec, a) =>
      putEntity((await access.tenant(parseTenantId(t))).nc, parseTenantId(t), { kind, id, spec, by: a.by, ...(name !== undefined ? { name } : {}) }),
    deleteEntity: async (t, kind, id, a) => deleteEntity((await access.tenant(parseTenantId(t))).nc, parseTenantId(t), kind, id, a.by),
    // Signed as the console: the request is what warrants the lease of the connection's credentials.
    preview: async (t, req, a) => {
      const tc = await access.tenant(parseTenantId(t));
      return previewQuery(tc.nc, parseTenantId(t), { ...req, by: a.by }, tc.signer ? { signer: tc.signer } : {});
    },
  };
}
