/**
 * Secrets and leases: what crosses `cap.<t>.svc.secrets.<verb>` (core NATS request/reply,
 * MessagePack), the credential types (connectors, auth strategies, lifecycles) and the
 * typed errors of the lease service.
 *
 * The worker and the orchestrator only ever hold key **names**: a lease names the keys an
 * attempt may receive, and only the sandbox service redeems it, getting the values sealed
 * to its own X25519 key. Values travel in clear nowhere: the CLI seals a `put`/`rotate`
 * value to the service's per-tenant key, and the service seals a redemption to the
 * sandbox's key. No reply, error or log line ever holds a value.
 *
 * Errors cross the wire as the `Capstan-Error-Code` / `Capstan-Error` headers of an empty
 * reply; the kit client rebuilds them with {@link secretsErrorFromWire}.
 */
import { CapstanError, ErrorCode, SchemaError } from './errors.js';
import { actorSchema, reasonSchema } from './events.js';
import { RUN_ID_PATTERN, type RunId, type TenantId } from './ids.js';
import { TOKEN_PATTERN } from './names.js';
import { ENV_NAME_PATTERN } from './sandbox-spec.js';
import type { Infer, Schema } from './validate.js';
import { arr, bool, int, literal, obj, optional, str, tagged } from './validate.js';

// ---------------------------------------------------------------------------------------
// Credential types.

/**
 * How a credential stays valid.
 * - `static`: stored as given; changes only by `rotate`.
 * - `refreshable`: short-lived (an OAuth access token); the lease service refreshes it
 *   through its connector before issuing a lease once it is inside its refresh window.
 * - `exchangeable`: traded for a short-lived credential at use (token exchange). Recorded;
 *   not leased yet.
 * - `ambient`: provided by where the sandbox runs (an instance role); nothing is stored.
 *   Recorded; not leased yet.
 */
export const Lifecycle = {
  Static: 'static',
  Refreshable: 'refreshable',
  Exchangeable: 'exchangeable',
  Ambient: 'ambient',
} as const;
export type Lifecycle = (typeof Lifecycle)[keyof typeof Lifecycle];
export const LIFECYCLES = Object.values(Lifecycle);

/** How a connector authenticates. */
export const AuthKind = {
  UsernamePassword: 'username_password',
  Keypair: 'keypair',
  OAuth2AuthCode: 'oauth2_auth_code',
  OAuth2ClientCredentials: 'oauth2_client_credentials',
} as const;
export type AuthKind = (typeof AuthKind)[keyof typeof AuthKind];

/** A secret's name: it becomes an environment variable in the sandbox. */
export const SECRET_NAME_PATTERN = ENV_NAME_PATTERN;
const secretName = str({ min: 1, max: 64, pattern: SECRET_NAME_PATTERN });
const httpUrl = str({ min: 8, max: 2048, pattern: /^https?:\/\/[^\s]+$/ });
const scopes = optional(arr(str({ min: 1, max: 256, pattern: /^[\x21-\x7e]+$/ }), { max: 32 }));

/**
 * An auth strategy holds no secret itself: where one is needed (a client secret, a refresh
 * token) it names another secret of the same tenant (`…Key`).
 */
export const authStrategySchema = tagged('auth strategy', {
  [AuthKind.UsernamePassword]: obj('username_password', { type: literal(AuthKind.UsernamePassword), username: str({ min: 1, max: 256 }) }),
  [AuthKind.Keypair]: obj('keypair', { type: literal(AuthKind.Keypair), publicKey: optional(str({ min: 1, max: 8192 })) }),
  [AuthKind.OAuth2AuthCode]: obj('oauth2_auth_code', {
    type: literal(AuthKind.OAuth2AuthCode),
    tokenUrl: httpUrl,
    clientId: str({ min: 1, max: 256 }),
    clientSecretKey: optional(secretName),
    refreshTokenKey: secretName,
    scopes,
  }),
  [AuthKind.OAuth2ClientCredentials]: obj('oauth2_client_credentials', {
    type: literal(AuthKind.OAuth2ClientCredentials),
    tokenUrl: httpUrl,
    clientId: str({ min: 1, max: 256 }),
    clientSecretKey: secretName,
    scopes,
    audience: optional(str({ min: 1, max: 512 })),
  }),
});
export type AuthStrategy = Infer<typeof authStrategySchema>;

/** A connector (a system steps talk to) and how it authenticates; kept apart from the credential. */
export const connectorSchema = obj('connector', {
  name: str({ min: 1, max: 64, pattern: TOKEN_PATTERN }),
  auth: authStrategySchema,
});
export type Connector = Infer<typeof connectorSchema>;

/** Auth strategies a `refreshable` credential can be refreshed through. */
export const REFRESHABLE_AUTH: ReadonlySet<AuthKind> = new Set([AuthKind.OAuth2AuthCode, AuthKind.OAuth2ClientCredentials]);

// ---------------------------------------------------------------------------------------
// Sealed boxes.

/** Raw bytes (MessagePack `bin`) of a bounded length. */
export function bytes(opts: { min?: number; max: number }): Schema<Uint8Array> {
  const { min = 0, max } = opts;
  return {
    name: 'bytes',
    parse(v, path = '') {
      if (!(v instanceof Uint8Array)) throw new SchemaError('bytes', path, 'must be binary data');
      if (v.length < min || v.length > max) throw new SchemaError('bytes', path, `must have ${min}..${max} bytes`);
      return v;
    },
  };
}

export const SEALED_BOX_VERSION = 1 as const;

/**
 * Values sealed to one recipient's X25519 key: an ephemeral key agreement, HKDF-SHA256,
 * then AES-256-GCM (`ct` ends with the 16-byte tag). Only the holder of the recipient's
 * private key opens it, and only with the same associated data.
 */
export const sealedBoxSchema = obj('sealed box', {
  v: literal(SEALED_BOX_VERSION),
  epk: bytes({ min: 32, max: 32 }),
  nonce: bytes({ min: 12, max: 12 }),
  ct: bytes({ min: 16, max: 512 * 1024 }),
});
export type SealedBox = Infer<typeof sealedBoxSchema>;

/** A recipient's X25519 public key as sent: base64 of the raw 32 bytes or of SPKI DER. */
const recipientKey = str({ min: 40, max: 256, pattern: /^[A-Za-z0-9+/_-]+={0,2}$/ });

const enc = new TextEncoder();

/**
 * The associated data a redemption is sealed with: the lease's whole scope, so sealed values
 * opened for any other tenant, run, step, attempt or lease fail to open.
 */
export function leaseAad(tenant: TenantId, scope: { readonly runId: string; readonly step: string; readonly attempt: number; readonly leaseId: string }): Uint8Array {
  return enc.encode(`capstan/lease/v1\n${tenant}\n${scope.runId}\n${scope.step}\n${scope.attempt}\n${scope.leaseId}`);
}

/** The associated data of a value sealed by the CLI for `put`/`rotate`: the tenant and the name. */
export function putAad(tenant: TenantId, name: string): Uint8Array {
  return enc.encode(`capstan/secret-put/v1\n${tenant}\n${name}`);
}

// ---------------------------------------------------------------------------------------
// Leases.

/** Most keys one lease can name. */
export const MAX_LEASE_KEYS = 32;
/** Largest secret value accepted, in bytes. */
export const MAX_SECRET_BYTES = 64 * 1024;
/** A lease id: 128 random bits, base64url. */
export const LEASE_ID_PATTERN = /^[A-Za-z0-9_-]{22}$/;

const runId = str({ pattern: RUN_ID_PATTERN }) as unknown as Schema<RunId>;
const step = str({ min: 1, max: 64, pattern: TOKEN_PATTERN });
const attempt = int({ min: 1, max: 1_000_000 });
const leaseId = str({ min: 22, max: 22, pattern: LEASE_ID_PATTERN });

function uniqueNames(name: string): Schema<string[]> {
  const inner = arr(secretName, { max: MAX_LEASE_KEYS });
  return {
    name,
    parse(v, path = '') {
      const keys = inner.parse(v, path);
      if (keys.length === 0) throw new SchemaError(name, path, 'must name at least one key');
      if (new Set(keys).size !== keys.length) throw new SchemaError(name, path, 'must not name a key twice');
      return keys;
    },
  };
}

const leaseRequestSchema = obj('lease request', {
  runId,
  step,
  attempt,
  keys: uniqueNames('lease keys'),
  /** Asked-for lifetime; the service caps it (`SECRETS_MAX_TTL_MS`). */
  ttlMs: optional(int({ min: 100, max: 24 * 3_600_000 })),
  /**
   * The datasync service's preview: the person's signed preview request as it arrived (its
   * body and proof headers), which is what warrants the lease; a preview has no run.
   */
  preview: optional(
    obj('preview warrant', {
      request: bytes({ min: 1, max: 128 * 1024 }),
      signer: str({ min: 1, max: 16_384 }),
      signature: str({ min: 1, max: 256 }),
    }),
  ),
});
export type LeaseRequest = Infer<typeof leaseRequestSchema>;

const leaseGrantSchema = obj('lease grant', {
  leaseId,
  keys: uniqueNames('lease keys'),
  /**
   * By when the lease must be claimed, by the database's clock (ISO 8601); once claimed it
   * stays redeemable for its TTL from the claim.
   */
  expiresAt: str({ min: 20, max: 40 }),
});
export type LeaseGrant = Infer<typeof leaseGrantSchema>;

const redeemRequestSchema = obj('redeem request', { leaseId, runId, step, attempt, recipientKey });
export type RedeemRequest = Infer<typeof redeemRequestSchema>;

const redeemReplySchema = obj('redeem reply', { sealed: sealedBoxSchema });
export type RedeemReply = Infer<typeof redeemReplySchema>;

/**
 * The sandbox that will redeem a lease claims it first, once it holds a container for the
 * attempt: the lease's TTL counts from this claim, not from its issue, so a step that waited
 * for a slot or a cold start still finds it redeemable.
 */
const claimRequestSchema = obj('claim request', { leaseId, runId, step, attempt, sandbox: str({ min: 1, max: 128 }) });
export type ClaimRequest = Infer<typeof claimRequestSchema>;

/** When the claimed lease stops being redeemable, by the database's clock (ISO 8601). */
const claimReplySchema = obj('claim reply', { expiresAt: str({ min: 20, max: 40 }) });
export type ClaimReply = Infer<typeof claimReplySchema>;

const revokeRequestSchema = obj('revoke request', { runId, by: optional(actorSchema), reason: optional(reasonSchema) });
export type RevokeRequest = Infer<typeof revokeRequestSchema>;

const revokeReplySchema = obj('revoke reply', { revoked: int({ min: 0 }) });
export type RevokeReply = Infer<typeof revokeReplySchema>;

// ---------------------------------------------------------------------------------------
// Administration (the CLI). Every administration request is signed (kit's proof.ts) by an
// operator, the console or the admin: who acted is the signing credential. `by` is heard
// only from a signer that acts for people it signed in (the console, the admin); from an
// operator it is ignored.

const putRequestSchema = obj('put request', {
  name: secretName,
  /** The value, sealed to the service's key for this tenant with {@link putAad}. */
  sealed: sealedBoxSchema,
  by: optional(actorSchema),
  lifecycle: optional(literal(...LIFECYCLES)),
  connector: optional(connectorSchema),
  /** A refreshable credential is refreshed once it expires within this window. */
  refreshWindowMs: optional(int({ min: 0, max: 30 * 24 * 3_600_000 })),
  /** When the value stops working (ISO 8601), if known: an access token's expiry. */
  expiresAt: optional(str({ min: 20, max: 40 })),
});
export type PutRequest = Infer<typeof putRequestSchema>;

const rotateRequestSchema = obj('rotate request', {
  name: secretName,
  /** A new value; absent, a refreshable secret is refreshed through its connector now. */
  sealed: optional(sealedBoxSchema),
  by: optional(actorSchema),
  expiresAt: optional(str({ min: 20, max: 40 })),
});
export type RotateRequest = Infer<typeof rotateRequestSchema>;

const deleteRequestSchema = obj('delete request', { name: secretName, by: optional(actorSchema) });
export type DeleteRequest = Infer<typeof deleteRequestSchema>;

const listRequestSchema = obj('list request', { includeDeleted: optional(bool()) });
export type ListRequest = Infer<typeof listRequestSchema>;

const keyRequestSchema = obj('key request', {});

/** What `list`, `put`, `rotate` and `delete` say about a secret: never its value. */
const secretInfoSchema = obj('secret info', {
  name: secretName,
  version: int({ min: 1 }),
  lifecycle: literal(...LIFECYCLES),
  connector: optional(str({ max: 64 })),
  auth: optional(str({ max: 64 })),
  createdAt: str({ max: 40 }),
  rotatedAt: optional(str({ max: 40 })),
  deletedAt: optional(str({ max: 40 })),
  expiresAt: optional(str({ max: 40 })),
  refreshedAt: optional(str({ max: 40 })),
});
export type SecretInfo = Infer<typeof secretInfoSchema>;

/** `by`: who the service recorded as acting (the signer's name, or the user the console or admin acts for). */
const secretInfoReplySchema = obj('secret reply', { secret: secretInfoSchema, by: optional(actorSchema) });
const listReplySchema = obj('list reply', { secrets: arr(secretInfoSchema, { max: 100_000 }) });
const keyReplySchema = obj('key reply', {
  /** base64 of the raw X25519 public key values for this tenant are sealed to. */
  publicKey: recipientKey,
});
export type KeyReply = Infer<typeof keyReplySchema>;

/** @throws SchemaError */
export const parseLeaseRequest = (v: unknown): LeaseRequest => leaseRequestSchema.parse(v);
export const parseLeaseGrant = (v: unknown): LeaseGrant => leaseGrantSchema.parse(v);
export const parseRedeemRequest = (v: unknown): RedeemRequest => redeemRequestSchema.parse(v);
export const parseRedeemReply = (v: unknown): RedeemReply => redeemReplySchema.parse(v);
export const parseClaimRequest = (v: unknown): ClaimRequest => claimRequestSchema.parse(v);
export const parseClaimReply = (v: unknown): ClaimReply => claimReplySchema.parse(v);
export const parseRevokeRequest = (v: unknown): RevokeRequest => revokeRequestSchema.parse(v);
export const parseRevokeReply = (v: unknown): RevokeReply => revokeReplySchema.parse(v);
export const parsePutRequest = (v: unknown): PutRequest => putRequestSchema.parse(v);
export const parseRotateRequest = (v: unknown): RotateRequest => rotateRequestSchema.parse(v);
export const parseDeleteRequest = (v: unknown): DeleteRequest => deleteRequestSchema.parse(v);
export const parseListRequest = (v: unknown): ListRequest => listRequestSchema.parse(v);
export const parseKeyRequest = (v: unknown): Record<string, never> => keyRequestSchema.parse(v) as Record<string, never>;
export const parseSecretReply = (v: unknown): { secret: SecretInfo; by?: string | undefined } => secretInfoReplySchema.parse(v);
export const parseListReply = (v: unknown): { secrets: SecretInfo[] } => listReplySchema.parse(v);
export const parseKeyReply = (v: unknown): KeyReply => keyReplySchema.parse(v);

// ---------------------------------------------------------------------------------------
// Errors.

/** Why a lease was refused at redemption. */
export type LeaseDenialCode =
  | typeof ErrorCode.LeaseNotFound
  | typeof ErrorCode.LeaseExpired
  | typeof ErrorCode.LeaseUsed
  | typeof ErrorCode.LeaseRevoked
  | typeof ErrorCode.LeaseScopeMismatch
  | typeof ErrorCode.LeaseNotWarranted
  | typeof ErrorCode.LeaseWrongRedeemer
  | typeof ErrorCode.LeaseAlreadyIssued;

const DENIAL_TEXT: Record<LeaseDenialCode, string> = {
  [ErrorCode.LeaseNotFound]: 'no such lease in this tenant',
  [ErrorCode.LeaseExpired]: 'the lease expired',
  [ErrorCode.LeaseUsed]: 'the lease was already claimed or redeemed (leases are single use)',
  [ErrorCode.LeaseRevoked]: 'the lease was revoked (its run was revoked or ended)',
  [ErrorCode.LeaseScopeMismatch]: 'the lease was issued for another run, step or attempt',
  [ErrorCode.LeaseNotWarranted]: "the run's record does not warrant this lease",
  [ErrorCode.LeaseWrongRedeemer]: 'the lease is bound to another redeemer',
  [ErrorCode.LeaseAlreadyIssued]: 'a lease for these keys of this step attempt was issued already',
};

/**
 * A claim or redemption (or an issue, for `lease_revoked`) the lease service refused. Only
 * `lease_expired` is retryable: the step's next attempt has a new lease issued; the others
 * say something is wrong with the lease itself.
 */
export class LeaseDeniedError extends CapstanError {
  constructor(
    code: LeaseDenialCode,
    readonly leaseId: string,
    message = `lease ${leaseId || '(new)'} denied: ${DENIAL_TEXT[code]}`,
  ) {
    super(code, message, code === ErrorCode.LeaseExpired);
  }
}

/** Keys the tenant has no (live) secret for; names only. */
export class SecretNotFoundError extends CapstanError {
  constructor(
    readonly tenant: string,
    readonly names: readonly string[],
    message = `tenant ${tenant} has no secret named ${names.join(', ')}`,
  ) {
    super(ErrorCode.SecretNotFound, message, false);
  }
}

/** The lease service cannot answer (none running, its database or key store away). Retryable. */
export class SecretsUnavailableError extends CapstanError {
  constructor(message: string, options?: ErrorOptions) {
    super(ErrorCode.SecretsUnavailable, message, true, options);
  }
}

/**
 * Rebuilds the typed error a lease service reply carried in its headers. Unknown codes stay
 * `CapstanError`s with that code, so callers can still branch on it.
 */
export function secretsErrorFromWire(code: string, message: string, ctx: { readonly tenant?: string; readonly leaseId?: string } = {}): CapstanError {
  switch (code) {
    case ErrorCode.LeaseNotFound:
    case ErrorCode.LeaseExpired:
    case ErrorCode.LeaseUsed:
    case ErrorCode.LeaseRevoked:
    case ErrorCode.LeaseScopeMismatch:
    case ErrorCode.LeaseNotWarranted:
    case ErrorCode.LeaseWrongRedeemer:
    case ErrorCode.LeaseAlreadyIssued:
      return new LeaseDeniedError(code, ctx.leaseId ?? '', message);
    case ErrorCode.SecretNotFound:
      return new SecretNotFoundError(ctx.tenant ?? '', [], message);
    case ErrorCode.SecretsUnavailable:
      return new SecretsUnavailableError(message);
    default:
      return new CapstanError(code as ErrorCode, message, code === ErrorCode.Unavailable);
  }
}

/**
 * The key a value would be sealed to was not vouched for by the tenant's secrets-lease
 * service (unsigned, signed by someone else, or by another account): nothing was sent.
 */
export class SealingKeyMismatchError extends CapstanError {
  constructor(
    readonly tenant: string,
    why: string,
  ) {
    super(ErrorCode.SealingKeyMismatch, `tenant ${tenant}: refusing to seal a value to an unproven key (${why})`, false);
  }
}
