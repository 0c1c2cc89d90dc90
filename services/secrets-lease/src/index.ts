/**
 * @capstan/secrets-lease — the data plane's secrets: per-tenant secrets stored with envelope
 * encryption (a data key per tenant wrapped by the master key), single-use leases for an
 * attempt's key names judged by the database's clock, redemption sealed to a sandbox's key,
 * revocation (by request, and when a run ends), credential refresh (the refreshers), webhook
 * signature checks for ingress, and an audit row for every issue, redemption, refusal and
 * revocation.
 */
export { createSecretsLease } from './app.js';
export type { SecretsLeaseService, SecretsLeaseOptions, SecretsLeaseStats } from './app.js';
export { loadConfig } from './config.js';
export type { Config } from './config.js';
export { createKeyring, encryptValue, decryptValue, valueAad } from './envelope.js';
export type { Keyring } from './envelope.js';
export { postgresSecretStore, secretInfo, checkValue } from './store.js';
export type { SecretStore, SecretMeta, PutOptions, RotateOptions } from './store.js';
export { createLeaseLedger, newLeaseId } from './leases.js';
export type { LeaseLedger, LeaseScope, IssuedLease, RevokeCause } from './leases.js';
export { createSecretRefresher } from './refresh.js';
export type { SecretRefresher } from './refresh.js';
export { watchRunEnds } from './run-ends.js';
export type { RunEndWatch } from './run-ends.js';
export { SecretsAudit } from './db.js';
export { refreshers, CredentialRefreshError, EndpointRefusedError, checkTokenEndpoint } from './credentials.js';
export type { Refresher, Refreshers, RefreshContext, Refreshed } from './credentials.js';
export { webhookKey, signDelivery, verifyDelivery } from './webhook-signature.js';
export type { SignedDelivery } from './webhook-signature.js';
