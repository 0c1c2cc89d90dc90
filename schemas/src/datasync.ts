/**
 * Data-sync pipelines: what crosses `cap.<t>.svc.datasync.<verb>` (core NATS request/reply,
 * MessagePack) and `cap.<t>.catalog.<kind>.<id>` (the tenant's catalog stream).
 *
 * Three per-tenant entities: a **connection** (a Postgres source: host, database, TLS, an
 * auth strategy naming the tenant's secrets), a **model** (a declarative mapping from source
 * tables and columns to entities and associations by keys) and a **destination** (a
 * Postgres schema, or a folder of JSONL or Parquet files). Their specs live in the data
 * plane only (the datasync service's own tables); the control plane sees a catalog record:
 * identifiers, a kind and type, a status, a digest of the spec and a few safe facts. A
 * pipeline run carries the three identifiers and nothing else.
 *
 * Step results are metadata only (counts, bytes, durations, fingerprints, opaque
 * references), parsed by closed schemas whose strings are short tokens or digests: a result
 * that carries a row does not parse, and the step fails. The one path that returns rows is
 * the bounded preview.
 */
import { CapstanError, ErrorCode } from './errors.js';
import { actorSchema } from './events.js';
import { RUN_ID_PATTERN, type RunId } from './ids.js';
import { TOKEN_PATTERN } from './names.js';
import { SECRET_NAME_PATTERN } from './secrets.js';
import type { Infer, Schema } from './validate.js';
import { arr, bool, int, literal, obj, optional, str, tagged } from './validate.js';

// ---------------------------------------------------------------------------------------
// Entities.

export const CatalogKind = { Connection: 'connection', Model: 'model', Destination: 'destination' } as const;
export type CatalogKind = (typeof CatalogKind)[keyof typeof CatalogKind];
export const CATALOG_KINDS = Object.values(CatalogKind);

/** An entity id: a subject token, chosen by the tenant (`shop-db`, `orders-model`). */
export const ENTITY_ID_PATTERN = TOKEN_PATTERN;
const entityId = str({ min: 1, max: 64, pattern: ENTITY_ID_PATTERN });
/**
 * A SQL identifier Capstan writes into statements (always quoted as well): letters, digits,
 * `_`, not starting with a digit, at most 63 bytes (Postgres's own limit).
 */
export const SQL_IDENT_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;
const ident = str({ min: 1, max: 63, pattern: SQL_IDENT_PATTERN });
const secretName = str({ min: 1, max: 64, pattern: SECRET_NAME_PATTERN });
const displayName = str({ min: 1, max: 128, pattern: /^[^\u0000-\u001f\u007f]+$/ });
const hostName = str({ min: 1, max: 253, pattern: /^[A-Za-z0-9._:-]+$/ });

export const PostgresAuth = { UsernamePassword: 'username_password', Keypair: 'keypair' } as const;

/**
 * How a Postgres connection authenticates, as a connector's auth strategy: the secrets it
 * needs are named, never held. `username_password`: the password is leased at use (none for
 * servers that trust the address). `keypair`: a TLS client certificate (public, kept in the
 * spec) and its private key (a secret, leased at use).
 */
export const connectionAuthSchema = tagged('connection auth', {
  [PostgresAuth.UsernamePassword]: obj('username_password', {
    type: literal(PostgresAuth.UsernamePassword),
    username: str({ min: 1, max: 63 }),
    passwordKey: optional(secretName),
  }),
  [PostgresAuth.Keypair]: obj('keypair', {
    type: literal(PostgresAuth.Keypair),
    username: str({ min: 1, max: 63 }),
    /** PEM of the client certificate (public). */
    certificate: str({ min: 32, max: 16_384, pattern: /-----BEGIN CERTIFICATE-----/ }),
    /** The secret holding the PEM of the certificate's private key. */
    privateKeyKey: secretName,
  }),
});
export type ConnectionAuth = Infer<typeof connectionAuthSchema>;

export const TlsMode = { Disable: 'disable', Require: 'require', VerifyFull: 'verify-full' } as const;
export type TlsMode = (typeof TlsMode)[keyof typeof TlsMode];

const tlsSchema = obj('tls', {
  /** `disable`; `require` (encrypted, server not verified); `verify-full` (CA and host name checked). */
  mode: literal(TlsMode.Disable, TlsMode.Require, TlsMode.VerifyFull),
  /** PEM of the CA that signed the server's certificate (public); `verify-full` needs it or the system's. */
  ca: optional(str({ min: 32, max: 65_536, pattern: /-----BEGIN CERTIFICATE-----/ })),
  /** The name the server's certificate must carry, when it is not `host`. */
  serverName: optional(hostName),
});

export const connectionSpecSchema = obj('connection', {
  type: literal('postgres'),
  host: hostName,
  port: int({ min: 1, max: 65_535 }),
  database: str({ min: 1, max: 63 }),
  tls: tlsSchema,
  auth: connectionAuthSchema,
});
export type ConnectionSpec = Infer<typeof connectionSpecSchema>;

/** Types a model field may be cast to (anything else keeps its source type). */
export const FIELD_TYPES = [
  'text',
  'integer',
  'bigint',
  'smallint',
  'numeric',
  'boolean',
  'date',
  'timestamp',
  'timestamptz',
  'double precision',
  'real',
  'jsonb',
  'uuid',
] as const;

const fieldSchema = obj('field', {
  /** The field's name in the model (and the destination's column). */
  name: ident,
  /** The source column it comes from. */
  column: ident,
  type: optional(literal(...FIELD_TYPES)),
});

const entitySchema = obj('entity', {
  name: ident,
  source: obj('source', { schema: optional(ident), table: ident }),
  fields: arr(fieldSchema, { max: 256 }),
  /** The fields that identify a record (the destination's key); unique and not null in the source. */
  key: arr(ident, { max: 8 }),
  /**
   * A source column that grows with every change (an `updated_at`, a version): later runs
   * retrieve only rows past the last loaded value. Without one, every run reads the table
   * and the Refresh step keeps only what changed.
   */
  cursor: optional(ident),
});

const associationSchema = obj('association', {
  name: ident,
  from: ident,
  to: ident,
  /** Fields of `from` holding the key of `to`, in the order of `to`'s key. */
  fields: arr(ident, { max: 8 }),
});

export const modelSpecSchema = obj('model', {
  entities: arr(entitySchema, { max: 64 }),
  associations: optional(arr(associationSchema, { max: 128 })),
});
export type ModelSpec = Infer<typeof modelSpecSchema>;
export type EntitySpec = ModelSpec['entities'][number];
export type AssociationSpec = NonNullable<ModelSpec['associations']>[number];

export const FileFormat = { Jsonl: 'jsonl', Parquet: 'parquet' } as const;
export type FileFormat = (typeof FileFormat)[keyof typeof FileFormat];

/** A folder below the service's files root, per tenant: relative, no `..`, no empty parts. */
export const FOLDER_PATTERN = /^(?!.*(?:^|\/)\.\.?(?:\/|$))[A-Za-z0-9_.-]+(?:\/[A-Za-z0-9_.-]+){0,15}$/;

export const destinationSpecSchema = tagged('destination', {
  postgres: obj('postgres destination', {
    type: literal('postgres'),
    /** The connection whose database receives the tables (its credentials are leased like a source's). */
    connection: entityId,
    schema: ident,
    /** Rows per upsert batch (one transaction each, recorded in the destination's load ledger). */
    batchRows: optional(int({ min: 1, max: 100_000 })),
  }),
  files: obj('files destination', {
    type: literal('files'),
    /** A folder below the datasync service's files root for this tenant. */
    path: str({ min: 1, max: 512, pattern: FOLDER_PATTERN }),
    format: literal(FileFormat.Jsonl, FileFormat.Parquet),
    /** Rows per part file. */
    batchRows: optional(int({ min: 1, max: 1_000_000 })),
  }),
});
export type DestinationSpec = Infer<typeof destinationSpecSchema>;

/** A spec by kind. */
export type EntitySpecOf<K extends CatalogKind> = K extends 'connection' ? ConnectionSpec : K extends 'model' ? ModelSpec : DestinationSpec;

/** @throws SchemaError */
export function parseEntitySpec<K extends CatalogKind>(kind: K, v: unknown): EntitySpecOf<K> {
  const schema = kind === CatalogKind.Connection ? connectionSpecSchema : kind === CatalogKind.Model ? modelSpecSchema : destinationSpecSchema;
  return schema.parse(v, kind) as EntitySpecOf<K>;
}

// ---------------------------------------------------------------------------------------
// The catalog record (control plane: identifiers and non-secret metadata).

export const EntityStatus = { Active: 'active', Deleted: 'deleted' } as const;
export type EntityStatus = (typeof EntityStatus)[keyof typeof EntityStatus];

const digest = str({ min: 64, max: 64, pattern: /^[0-9a-f]{64}$/ });

/**
 * A few facts about a spec that are safe to show anywhere: a type, an auth strategy's kind,
 * a TLS mode, a file format, counts, entity names. Never a host, a user, a path or a table.
 */
const summarySchema = obj('summary', {
  type: optional(literal('postgres', 'files')),
  auth: optional(literal(PostgresAuth.UsernamePassword, PostgresAuth.Keypair)),
  tls: optional(literal(TlsMode.Disable, TlsMode.Require, TlsMode.VerifyFull)),
  format: optional(literal(FileFormat.Jsonl, FileFormat.Parquet)),
  entities: optional(arr(ident, { max: 64 })),
  associations: optional(int({ min: 0, max: 128 })),
  /** A destination's connection id (an identifier, like the entity's own). */
  connection: optional(entityId),
  /**
   * A connection's secret key names (names, never values): the most the secrets-lease service
   * leases to the datasync service for a step or a preview that uses this connection.
   */
  keys: optional(arr(secretName, { max: 64 })),
});
export type EntitySummary = Infer<typeof summarySchema>;

const catalogRecordSchema = obj('catalog record', {
  kind: literal(...CATALOG_KINDS),
  id: entityId,
  version: int({ min: 1 }),
  name: displayName,
  status: literal(EntityStatus.Active, EntityStatus.Deleted),
  /** sha256 of the spec as stored in the data plane. */
  fingerprint: digest,
  summary: summarySchema,
  by: actorSchema,
  at: str({ min: 20, max: 40 }),
});
export type CatalogRecord = Infer<typeof catalogRecordSchema>;

/** @throws SchemaError */
export const parseCatalogRecord = (v: unknown): CatalogRecord => catalogRecordSchema.parse(v);

// ---------------------------------------------------------------------------------------
// Administration verbs.

const putRequestSchema = obj('datasync put', {
  kind: literal(...CATALOG_KINDS),
  id: entityId,
  name: optional(displayName),
  /** The spec, checked by its kind's schema in the service. */
  spec: { name: 'spec', parse: (v: unknown) => v } as Schema<unknown>,
  by: actorSchema,
});
export type DatasyncPutRequest = Infer<typeof putRequestSchema>;

const deleteRequestSchema = obj('datasync delete', { kind: literal(...CATALOG_KINDS), id: entityId, by: actorSchema });
export type DatasyncDeleteRequest = Infer<typeof deleteRequestSchema>;

const getRequestSchema = obj('datasync get', { kind: literal(...CATALOG_KINDS), id: entityId });
const listRequestSchema = obj('datasync list', { kind: optional(literal(...CATALOG_KINDS)), includeDeleted: optional(bool()) });
export type DatasyncListRequest = Infer<typeof listRequestSchema>;

const recordReplySchema = obj('datasync record reply', { record: catalogRecordSchema });
const listReplySchema = obj('datasync list reply', { records: arr(catalogRecordSchema, { max: 10_000 }) });

export const parseDatasyncPutRequest = (v: unknown): DatasyncPutRequest => putRequestSchema.parse(v);
export const parseDatasyncDeleteRequest = (v: unknown): DatasyncDeleteRequest => deleteRequestSchema.parse(v);
export const parseDatasyncGetRequest = (v: unknown): Infer<typeof getRequestSchema> => getRequestSchema.parse(v);
export const parseDatasyncListRequest = (v: unknown): DatasyncListRequest => listRequestSchema.parse(v);
export const parseRecordReply = (v: unknown): { record: CatalogRecord } => recordReplySchema.parse(v);
export const parseListRecordsReply = (v: unknown): { records: CatalogRecord[] } => listReplySchema.parse(v);

// ---------------------------------------------------------------------------------------
// Pipeline steps.

/** The five steps, in order. */
export const PipelineStep = { Retrieve: 'retrieve', Refresh: 'refresh', Build: 'build', Resolve: 'resolve', Load: 'load' } as const;
export type PipelineStep = (typeof PipelineStep)[keyof typeof PipelineStep];
export const PIPELINE_STEPS = Object.values(PipelineStep);

/** The workflow a pipeline run is, and the built-in handler (in every worker) of each of its steps. */
export const PIPELINE_WORKFLOW = 'datasync.pipeline';
export const pipelineHandler = (step: PipelineStep) => `${PIPELINE_WORKFLOW}.${step}`;

/** A pipeline run's input: identifiers only. */
export const pipelineInputSchema = obj('pipeline input', { connection: entityId, model: entityId, destination: entityId });
export type PipelineInput = Infer<typeof pipelineInputSchema>;
export const parsePipelineInput = (v: unknown): PipelineInput => pipelineInputSchema.parse(v);

const runId = str({ pattern: RUN_ID_PATTERN }) as unknown as Schema<RunId>;

const stepRequestSchema = obj('datasync step', {
  runId,
  step: literal(...PIPELINE_STEPS),
  attempt: int({ min: 1, max: 1_000_000 }),
  connection: entityId,
  model: entityId,
  destination: entityId,
  /** The attempt's time budget; the service stops the step past it. */
  timeoutMs: int({ min: 1 }),
});
export type DatasyncStepRequest = Infer<typeof stepRequestSchema>;
export const parseDatasyncStepRequest = (v: unknown): DatasyncStepRequest => stepRequestSchema.parse(v);

const count = int({ min: 0 });
/** An opaque reference into the tenant's data plane (`ds:<run>/<step>`, a part list's digest, …). */
export const REF_PATTERN = /^ds:[a-z0-9:/_-]{1,120}$/;

const entityCountsSchema = obj('entity counts', {
  name: ident,
  rows: count,
  bytes: optional(count),
  /** Refresh: rows retrieved that had not changed since the last load. */
  unchanged: optional(count),
  /** Resolve: references found, and references to no record of the target. */
  resolved: optional(count),
  dangling: optional(count),
  /** Load: batches written, and batches a retried load found already written. */
  batches: optional(count),
  skipped: optional(count),
});

/**
 * What a pipeline step returns: metadata only. Closed objects, numbers, and strings that are
 * tokens, identifiers or digests; anything else (a row, a value) fails to parse.
 */
const stepResultSchema = obj('datasync step result', {
  step: literal(...PIPELINE_STEPS),
  rows: count,
  bytes: count,
  durationMs: count,
  entities: arr(entityCountsSchema, { max: 64 }),
  /** sha256 over the source tables' columns and types (Retrieve), or the model's output columns. */
  schemaFingerprint: optional(digest),
  /** A full run (first run, or the model or destination changed) rather than an incremental one. */
  full: optional(bool()),
  ref: str({ min: 4, max: 124, pattern: REF_PATTERN }),
});
export type DatasyncStepResult = Infer<typeof stepResultSchema>;
/** @throws SchemaError — a result that carries anything but metadata */
export const parseStepResult = (v: unknown): DatasyncStepResult => stepResultSchema.parse(v);

const progressSchema = obj('datasync progress', { phase: str({ max: 32, pattern: TOKEN_PATTERN }), rows: count, bytes: count });
export type DatasyncProgress = Infer<typeof progressSchema>;

const errorRecordSchema = obj('error', { code: str({ min: 1, max: 64 }), message: str({ max: 2000 }), retryable: bool() });

/** Replies to a step request, on its inbox: `accepted`, `beat`s while it runs, one `done`. */
const stepReplySchema = tagged('datasync step reply', {
  accepted: obj('accepted', { type: literal('accepted') }),
  beat: obj('beat', { type: literal('beat'), progress: progressSchema }),
  done: obj('done', { type: literal('done'), result: optional(stepResultSchema), error: optional(errorRecordSchema) }),
});
export type DatasyncStepReply = Infer<typeof stepReplySchema>;
export const parseDatasyncStepReply = (v: unknown): DatasyncStepReply => stepReplySchema.parse(v);

const cancelRequestSchema = obj('datasync cancel', { runId, step: literal(...PIPELINE_STEPS), attempt: int({ min: 1 }) });
export type DatasyncCancelRequest = Infer<typeof cancelRequestSchema>;
export const parseDatasyncCancelRequest = (v: unknown): DatasyncCancelRequest => cancelRequestSchema.parse(v);

// ---------------------------------------------------------------------------------------
// The preview: the one path that returns rows, bounded.

export const PREVIEW_LIMITS = {
  /** Rows returned at most. */
  rows: 100,
  /** Columns returned at most. */
  columns: 64,
  /** Characters kept per cell. */
  cellChars: 200,
  /** Characters of SQL accepted. */
  sqlChars: 20_000,
  /** Statement timeout, default and most. */
  defaultTimeoutMs: 5000,
  maxTimeoutMs: 30_000,
} as const;

const previewRequestSchema = obj('preview request', {
  connection: entityId,
  sql: str({ min: 1, max: PREVIEW_LIMITS.sqlChars }),
  by: actorSchema,
  timeoutMs: optional(int({ min: 100, max: PREVIEW_LIMITS.maxTimeoutMs })),
  /**
   * When the asker signed the request (epoch ms). The signed request is what warrants the
   * preview's lease, once and while fresh: a request without it leases nothing.
   */
  at: optional(int({ min: 0 })),
});
export type PreviewRequest = Infer<typeof previewRequestSchema>;
export const parsePreviewRequest = (v: unknown): PreviewRequest => previewRequestSchema.parse(v);

const cell = { name: 'cell', parse: (v: unknown, path = '') => (v === null ? null : str({ max: PREVIEW_LIMITS.cellChars + 1 }).parse(v, path)) } as Schema<string | null>;

const previewReplySchema = obj('preview reply', {
  columns: arr(obj('column', { name: str({ max: PREVIEW_LIMITS.cellChars + 1 }), type: str({ max: 64 }) }), { max: PREVIEW_LIMITS.columns }),
  rows: arr(arr(cell, { max: PREVIEW_LIMITS.columns }), { max: PREVIEW_LIMITS.rows }),
  /** More rows (or columns) than returned. */
  truncated: bool(),
  /** Cells cut to {@link PREVIEW_LIMITS.cellChars} characters. */
  cellsTruncated: count,
  durationMs: count,
  /** The query's fingerprint (libpg_query's), for the audit log; never its text. */
  fingerprint: str({ min: 1, max: 32, pattern: /^[0-9a-f]+$/ }),
});
export type PreviewReply = Infer<typeof previewReplySchema>;
export const parsePreviewReply = (v: unknown): PreviewReply => previewReplySchema.parse(v);

// ---------------------------------------------------------------------------------------
// Errors.

/** No such connection, model or destination in this tenant (or it was deleted). */
export class DatasyncNotFoundError extends CapstanError {
  constructor(
    readonly kind: string,
    readonly id: string,
  ) {
    super(ErrorCode.DatasyncNotFound, `no ${kind} ${JSON.stringify(id.slice(0, 64))} in this tenant`);
  }
}

/** A preview query that is not one read-only SELECT/WITH; nothing was sent to the source. */
export class QueryRefusedError extends CapstanError {
  constructor(readonly why: string) {
    super(ErrorCode.QueryRefused, `preview refused: ${why}`);
  }
}

/**
 * Rebuilds the typed error a datasync reply carried in its headers. Unknown codes stay
 * `CapstanError`s with that code; `retryable` follows the code.
 */
export function datasyncErrorFromWire(code: string, message: string): CapstanError {
  const retryable = DATASYNC_RETRYABLE.has(code);
  return new CapstanError(code as ErrorCode, message, retryable);
}

/** Codes a step may be tried again after. */
export const DATASYNC_RETRYABLE: ReadonlySet<string> = new Set<string>([
  ErrorCode.DatasyncUnavailable,
  ErrorCode.SourceUnavailable,
  ErrorCode.PipelineBusy,
  ErrorCode.SecretsUnavailable,
  ErrorCode.Unavailable,
  ErrorCode.StepTimeout,
]);
