/**
 * The client of the secrets-lease service (`cap.<t>.svc.secrets.<verb>`, core NATS
 * request/reply, MessagePack).
 *
 * - The worker issues a lease for an attempt's key **names** (`issueLease`) and passes the
 *   lease id on; it never sees a value.
 * - The sandbox service redeems it once (`redeemLease`, or `redeemValues` which also makes a
 *   one-time key pair and opens the box) for values sealed to its own key.
 * - An operator may revoke a run (`revokeRun`); the service also does when the run ends.
 * - The CLI administers secrets (`putSecret`, `rotateSecret`, `deleteSecret`,
 *   `listSecrets`). A value is sealed here, to the service's key for the tenant, before it
 *   goes on the wire; replies never hold one. Administration and revocation are signed
 *   (`signer`: an operator's credential, the console's or the admin's): the service acts only
 *   for a proven administrator and records who signed, not who a request says it is.
 *
 * Every refusal comes back as its typed error (`secret_not_found`, `lease_expired`,
 * `lease_used`, `lease_revoked`, `lease_scope_mismatch`, …); no service answering is
 * `secrets_unavailable` (retryable).
 */
import {
  CapstanError,
  Role,
  SealingKeyMismatchError,
  decode,
  isPlainObject,
  leaseAad,
  parseKeyReply,
  parseClaimReply,
  parseLeaseGrant,
  parseListReply,
  parseRedeemReply,
  parseRevokeReply,
  parseSecretReply,
  putAad,
  secretsErrorFromWire,
  SecretsUnavailableError,
  SecretsVerb,
  Subjects,
  InvalidArgumentError,
  type Connector,
  type LeaseGrant,
  type LeaseRequest,
  type Lifecycle,
  type RedeemReply,
  type RedeemRequest,
  type RunId,
  type SealedBox,
  type SecretInfo,
  type TenantId,
  parseVerifyReply,
  type VerifyReply,
  type VerifyRequest,
} from '@capstan/schemas';
import type { NatsConnection } from './nats.js';
import type { Msg } from '@nats-io/transport-node';
import { callService } from './rpc.js';
import { verifyProof } from './proof.js';
import type { Signer } from './proof.js';
import { generateRecipient, seal, type Recipient } from './sealed-box.js';

export interface SecretsCallOptions {
  /** How long to wait for the service's answer (default 5 s). */
  readonly timeoutMs?: number;
  /**
   * Signs the request as the caller: issuing a lease needs the worker named by the run's
   * record, claiming and redeeming one the sandbox service it is bound to, administering
   * secrets an operator (or the console or admin acting for one).
   */
  readonly signer?: Signer;
  /**
   * The tenant's account key. When given, the sealing key is used only if the secrets-lease
   * service of that account signed the answer (no one else can hand out a key to seal to):
   * otherwise `sealing_key_mismatch`, and nothing is sent.
   */
  readonly account?: string;
}

function call<T>(
  nc: NatsConnection,
  t: TenantId,
  verb: SecretsVerb,
  body: object,
  parse: (v: unknown) => T,
  o: SecretsCallOptions = {},
  ctx: { leaseId?: string; checkReply?: (m: Msg) => void } = {},
): Promise<T> {
  return callService(nc, {
    ...(ctx.checkReply ? { checkReply: ctx.checkReply } : {}),
    subject: Subjects.secrets(t, verb),
    body,
    parse,
    ...(o.timeoutMs !== undefined ? { timeoutMs: o.timeoutMs } : {}),
    ...(o.signer ? { signer: o.signer } : {}),
    unavailable: (why, cause) => new SecretsUnavailableError(`secrets-lease service, ${verb}: ${why} (tenant ${t})`, { cause }),
    fromWire: (code, message) => secretsErrorFromWire(code, message, { tenant: t, ...ctx }),
  });
}

// ---------------------------------------------------------------------------------------
// Leases.

/**
 * Issues a lease for `scope.keys` (names) of one attempt. Refreshable secrets among them are
 * refreshed first, when due.
 * @throws SecretNotFoundError naming every unknown key; LeaseDeniedError (`lease_revoked`) when the run is revoked or ended; SecretsUnavailableError
 */
export function issueLease(nc: NatsConnection, t: TenantId, scope: LeaseRequest, o?: SecretsCallOptions): Promise<LeaseGrant> {
  return call(nc, t, SecretsVerb.Lease, scope, parseLeaseGrant, o);
}

/**
 * Redeems a lease once, for its values sealed to `req.recipientKey` with {@link leaseAad}.
 * For the sandbox service only (NATS permissions keep anyone else off the subject).
 * @throws LeaseDeniedError (`lease_used`, `lease_expired`, `lease_revoked`, `lease_scope_mismatch`, `lease_not_found`); SecretNotFoundError; SecretsUnavailableError
 */
export function redeemLease(nc: NatsConnection, t: TenantId, req: RedeemRequest, o?: SecretsCallOptions): Promise<RedeemReply> {
  return call(nc, t, SecretsVerb.Redeem, req, parseRedeemReply, o, { leaseId: req.leaseId });
}

export interface LeaseScopeRef {
  readonly leaseId: string;
  readonly runId: RunId;
  readonly step: string;
  readonly attempt: number;
}

/**
 * Opens the values of a redemption: `{ KEY: value }`.
 * @throws InvalidArgumentError when the box was not sealed to `recipient` for exactly this scope
 */
export function openLeaseValues(recipient: Recipient, t: TenantId, scope: LeaseScopeRef, sealed: SealedBox): Record<string, string> {
  const plain = recipient.open(sealed, leaseAad(t, scope));
  let doc: unknown;
  try {
    doc = decode(plain);
  } finally {
    plain.fill(0);
  }
  if (!isPlainObject(doc) || !Object.values(doc).every((v) => typeof v === 'string')) throw new InvalidArgumentError('the sealed lease values are not a map of names to strings');
  return doc as Record<string, string>;
}

/**
 * Claims a lease for the sandbox (container name) that will redeem it: the lease's TTL
 * counts from this call. Resolves with the new expiry (the database's clock).
 * For the sandbox service only.
 * @throws LeaseDeniedError (`lease_used` when claimed already, `lease_expired` past its claim window, …); SecretsUnavailableError
 */
export async function claimLease(nc: NatsConnection, t: TenantId, scope: LeaseScopeRef & { readonly sandbox: string }, o?: SecretsCallOptions): Promise<Date> {
  const { expiresAt } = await call(nc, t, SecretsVerb.Claim, scope, parseClaimReply, o, { leaseId: scope.leaseId });
  return new Date(expiresAt);
}

/**
 * Redeems a lease with a one-time key pair and opens the values: what the sandbox service
 * does for each attempt (after its claim). The private key never leaves this call.
 */
export async function redeemValues(nc: NatsConnection, t: TenantId, scope: LeaseScopeRef, o?: SecretsCallOptions): Promise<Record<string, string>> {
  const recipient = generateRecipient();
  const { sealed } = await redeemLease(nc, t, { ...scope, recipientKey: recipient.publicKey }, o);
  return openLeaseValues(recipient, t, scope, sealed);
}

/** Revokes every open lease of a run, and any it would be issued later. Returns how many were open. */
export async function revokeRun(nc: NatsConnection, t: TenantId, runId: RunId, o: SecretsCallOptions & { by?: string; reason?: string } = {}): Promise<number> {
  const body = { runId, ...(o.by ? { by: o.by } : {}), ...(o.reason ? { reason: o.reason } : {}) };
  return (await call(nc, t, SecretsVerb.Revoke, body, parseRevokeReply, o)).revoked;
}

// ---------------------------------------------------------------------------------------
// Administration.

export interface PutSecretOptions extends SecretsCallOptions {
  /**
   * Who is storing it, as a signer acting for people it signed in states it (the console,
   * the admin); from anyone else the service records the signer's own name.
   */
  readonly by?: string;
  readonly lifecycle?: Lifecycle;
  readonly connector?: Connector;
  readonly refreshWindowMs?: number;
  /** When the value stops working, if known. */
  readonly expiresAt?: Date;
}

/** The value sealed to the service's key for this tenant and name: it never crosses NATS in clear. */
async function sealForService(nc: NatsConnection, t: TenantId, name: string, value: string, o?: SecretsCallOptions): Promise<SealedBox> {
  const account = o?.account;
  const checkReply = account
    ? (m: Msg) => {
        let role: string | undefined;
        try {
          // Signed over the request's subject: this tenant's key verb, nothing else.
          role = verifyProof(m.headers, Subjects.secrets(t, SecretsVerb.Key), m.data, { accounts: [account] }).role;
        } catch (e) {
          throw new SealingKeyMismatchError(t, CapstanError.is(e) ? e.message : String(e));
        }
        if (role !== Role.SecretsLease) throw new SealingKeyMismatchError(t, `the key was signed by a ${role ?? 'roleless'} user, not the secrets-lease service`);
      }
    : undefined;
  const { publicKey } = await call(nc, t, SecretsVerb.Key, {}, parseKeyReply, o, checkReply ? { checkReply } : {});
  return seal(publicKey, new TextEncoder().encode(value), putAad(t, name));
}

/** Stores a secret (a new version when the name exists). Resolves with its description, never its value. */
/** A secret as a change left it, and who the service recorded as making the change (absent from older services). */
export type ChangedSecret = SecretInfo & { readonly by?: string };

const changed = (r: { secret: SecretInfo; by?: string | undefined }): ChangedSecret => ({ ...r.secret, ...(r.by !== undefined ? { by: r.by } : {}) });

export async function putSecret(nc: NatsConnection, t: TenantId, name: string, value: string, o: PutSecretOptions): Promise<ChangedSecret> {
  const sealed = await sealForService(nc, t, name, value, o);
  const body = {
    name,
    sealed,
    ...(o.by !== undefined ? { by: o.by } : {}),
    ...(o.lifecycle ? { lifecycle: o.lifecycle } : {}),
    ...(o.connector ? { connector: o.connector } : {}),
    ...(o.refreshWindowMs !== undefined ? { refreshWindowMs: o.refreshWindowMs } : {}),
    ...(o.expiresAt ? { expiresAt: o.expiresAt.toISOString() } : {}),
  };
  return changed(await call(nc, t, SecretsVerb.Put, body, parseSecretReply, o));
}

/**
 * Replaces an existing secret's value (a new version). Without a value, a refreshable
 * secret is refreshed through its connector now.
 */
export async function rotateSecret(
  nc: NatsConnection,
  t: TenantId,
  name: string,
  value: string | undefined,
  o: SecretsCallOptions & { by?: string; expiresAt?: Date },
): Promise<ChangedSecret> {
  const sealed = value === undefined ? undefined : await sealForService(nc, t, name, value, o);
  const body = { name, ...(o.by !== undefined ? { by: o.by } : {}), ...(sealed ? { sealed } : {}), ...(o.expiresAt ? { expiresAt: o.expiresAt.toISOString() } : {}) };
  return changed(await call(nc, t, SecretsVerb.Rotate, body, parseSecretReply, o));
}

/** Deletes a secret: its ciphertext is erased; name, version and dates stay listed as deleted. */
export async function deleteSecret(nc: NatsConnection, t: TenantId, name: string, o: SecretsCallOptions & { by?: string }): Promise<ChangedSecret> {
  return changed(await call(nc, t, SecretsVerb.Delete, { name, ...(o.by !== undefined ? { by: o.by } : {}) }, parseSecretReply, o));
}

/** Names, versions, lifecycles and dates of a tenant's secrets; never values. */
export async function listSecrets(nc: NatsConnection, t: TenantId, o: SecretsCallOptions & { includeDeleted?: boolean } = {}): Promise<SecretInfo[]> {
  return (await call(nc, t, SecretsVerb.List, o.includeDeleted ? { includeDeleted: true } : {}, parseListReply, o)).secrets;
}

// ---------------------------------------------------------------------------------------
// Webhook signatures.

/**
 * Asks the service whether a webhook delivery is signed by one of the named secrets. The
 * HMACs are computed there, so the signing secrets never leave the service.
 * @throws SecretNotFoundError when a named secret does not exist; SecretsUnavailableError
 */
export function verifyWebhook(nc: NatsConnection, t: TenantId, req: VerifyRequest, o: SecretsCallOptions = {}): Promise<VerifyReply> {
  return call(nc, t, SecretsVerb.Verify, req, parseVerifyReply, o);
}
