/**
 * A tenant's data plane on its own nats-server, in its own network, joined to the platform as
 * a leaf node. The tenant's server dials OUT to the platform's leaf port with one credential
 * of the tenant's account (role `leaf`); the platform opens nothing toward the tenant. The
 * tenant's workers connect to their local server only, with their usual worker credentials.
 *
 * The local server runs in operator mode with the same operator, knowing only the tenant's
 * account (preloaded), so a local worker's own permissions are enforced there; what crosses
 * the leaf connection is bounded again on the platform by the leaf credential's permissions
 * (`permissionsFor(Role.Leaf)`: what the local workers may publish, and replies to their
 * inboxes only). It runs without JetStream: JetStream requests cross to the tenant's account
 * on the platform, where its streams are.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CapstanError, ErrorCode, parseToken, Role, type TenantId } from '@capstan/schemas';
import { issueCredential, type AdminTarget, type AuthStore, type IssuedUser } from '@capstan/kit';

/** What a tenant's leaf server configuration is made of (no secret: the creds stay in their file). */
export interface LeafConfigInput {
  readonly tenant: TenantId;
  /** The operator JWT (public): the local server trusts the same operator. */
  readonly operatorJwt: string;
  readonly systemAccount: string;
  readonly systemAccountJwt: string;
  readonly tenantAccount: string;
  /** The tenant account's JWT as issued now (its limits; revocations as of now). */
  readonly tenantAccountJwt: string;
  /** The platform's leaf URLs (`nats-leaf://host:7422`, or `tls://…` in production). */
  readonly platformLeafUrls: readonly string[];
  /** Path of the leaf credential on the tenant's machine. */
  readonly credsPath: string;
  /** Where the local server listens for the tenant's own processes (default 127.0.0.1:4222). */
  readonly listen?: string;
  /** The CA that signed the platform's leaf certificate, when the platform's leaf port speaks TLS. */
  readonly caFile?: string;
}

/** The operator-mode lines of the local server: the operator, and only the tenant's account. */
export function leafAuthConfig(i: LeafConfigInput): string {
  return [
    `operator: ${i.operatorJwt}`,
    `system_account: ${i.systemAccount}`,
    // Memory resolver: nothing is fetched from or pushed by the platform (no inbound path).
    `resolver: MEMORY`,
    `resolver_preload: {`,
    `  ${i.systemAccount}: ${i.systemAccountJwt}`,
    `  ${i.tenantAccount}: ${i.tenantAccountJwt}`,
    `}`,
  ].join('\n');
}

/** The outbound leaf connection: the tenant's account here joined to its account there. */
export function leafRemoteConfig(i: LeafConfigInput): string {
  return [
    `leafnodes {`,
    `  remotes: [`,
    `    {`,
    `      urls: [${i.platformLeafUrls.map((u) => JSON.stringify(u)).join(', ')}]`,
    `      credentials: ${JSON.stringify(i.credsPath)}`,
    `      account: ${i.tenantAccount}`,
    i.caFile ? `      tls: { ca_file: ${JSON.stringify(i.caFile)} }` : '',
    `    }`,
    `  ]`,
    `}`,
  ]
    .filter(Boolean)
    .join('\n');
}

/** A whole configuration file for the tenant's leaf server (`nats-server -c leaf.conf`). */
export function leafNodeConfig(i: LeafConfigInput): string {
  return [
    `# The data plane's nats-server for tenant ${i.tenant}: dials out to the platform as a leaf`,
    `# node; workers connect here with their worker credentials. No JetStream here: the`,
    `# tenant's streams are on the platform.`,
    `server_name: "leaf-${i.tenant}"`,
    `listen: "${i.listen ?? '127.0.0.1:4222'}"`,
    leafAuthConfig(i),
    leafRemoteConfig(i),
    '',
  ].join('\n');
}

export interface LeafIssueOptions {
  /** The credential's name (default `leaf`). */
  readonly name?: string;
  /** The worker pools the leaf carries (default `default`). */
  readonly pools?: readonly string[];
  /** Public keys of the local users (workers) whose replies may cross the leaf. */
  readonly localUsers: readonly string[];
  readonly platformLeafUrls: readonly string[];
  /** Where the creds will be on the tenant's machine (default `leaf.creds` beside the config). */
  readonly credsPath?: string;
  readonly listen?: string;
  readonly caFile?: string;
}

/**
 * Issues a tenant's leaf credential and the configuration of its leaf server
 * (`capstan leaf config`). The creds are a secret: hand them to the tenant with the file.
 */
export async function issueLeaf(a: AdminTarget, t: TenantId, o: LeafIssueOptions): Promise<{ config: string; creds: Uint8Array; user: IssuedUser }> {
  if (o.localUsers.length === 0)
    throw new CapstanError(ErrorCode.InvalidArgument, 'a leaf carries the replies of at least one local user: name the workers that connect to it (their public keys)');
  if (o.platformLeafUrls.length === 0) throw new CapstanError(ErrorCode.InvalidArgument, "a leaf needs the platform's leaf URL(s) (nats-leaf://host:7422)");
  const pools = (o.pools?.length ? o.pools : ['default']).map((p) => parseToken('pool', p));
  const name = o.name ?? 'leaf';
  const issued = await issueCredential(a, t, Role.Leaf, name, { pools, localUsers: o.localUsers });
  return { ...issued, config: leafNodeConfig(await leafConfigInput(a.store, t, { ...o, credsPath: o.credsPath ?? 'leaf.creds' })) };
}

/** The configuration's inputs from the key store (public material only). */
export async function leafConfigInput(
  store: AuthStore,
  t: TenantId,
  o: { platformLeafUrls: readonly string[]; credsPath: string; listen?: string; caFile?: string },
): Promise<LeafConfigInput> {
  return {
    tenant: t,
    operatorJwt: readFileSync(join(store.dir, 'operator.jwt'), 'utf8').trim(),
    systemAccount: store.systemAccount,
    systemAccountJwt: store.systemAccountJwt(),
    tenantAccount: store.tenantAccountKey(t),
    tenantAccountJwt: await store.accountJwt(t),
    platformLeafUrls: o.platformLeafUrls,
    credsPath: o.credsPath,
    ...(o.listen ? { listen: o.listen } : {}),
    ...(o.caFile ? { caFile: o.caFile } : {}),
  };
}
