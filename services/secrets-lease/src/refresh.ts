/**
 * Refreshing `refreshable` secrets before a lease names them, through the refreshers of
 * credentials.ts. Due means inside the secret's refresh window by the
 * database's clock. A refresh that fails while the current value has not expired yet is
 * logged and the current value is leased; once it has expired, the lease is refused.
 *
 * One refresh per secret at a time in this process; across processes, the store's
 * `expectVersion` makes a slower refresher step aside for the one that got there first.
 */
import { CapstanError, REFRESHABLE_AUTH, type Connector, type JsonValue, type TenantId } from '@capstan/schemas';
import type { AllowEntry, Logger } from '@capstan/kit';
import { CredentialRefreshError, type Refreshers } from './credentials.js';
import { checkValue, type SecretMeta, type SecretStore } from './store.js';
import { SERVICE_ACTOR } from './db.js';

const enc = new TextEncoder();

export interface SecretRefresher {
  /** Refreshes every due secret among `metas` (before a lease is issued for them). */
  refreshDue(t: TenantId, metas: Iterable<SecretMeta>): Promise<void>;
  /** Refreshes one secret now, due or not (`capstan secrets rotate NAME` without a value). */
  refreshNow(t: TenantId, meta: SecretMeta, by: string): Promise<SecretMeta>;
}

function tokenUrlOf(c: Connector): string | undefined {
  return 'tokenUrl' in c.auth ? (c.auth as { tokenUrl?: string }).tokenUrl : undefined;
}

export interface RefresherOptions {
  /** Admin allow-list of token endpoint addresses otherwise refused (`SECRETS_REFRESH_ALLOW`). */
  readonly allow: readonly AllowEntry[];
  /** Writes one audit row of a refresh that did not store a value (refused or failed). */
  readonly audit: (t: TenantId, name: string, by: string, detail: { readonly [k: string]: JsonValue }) => Promise<void>;
}

export function createSecretRefresher(store: SecretStore, registry: Refreshers, log: Logger, maxBytes: number, o: RefresherOptions): SecretRefresher {
  const inflight = new Map<string, Promise<SecretMeta>>();

  /**
   * A refresh, audited either way: a stored value is its `secret.refreshed` row (written by
   * the store with the value), a refusal or a failure its `secret.refresh_failed` row.
   */
  async function refresh(t: TenantId, meta: SecretMeta, by: string): Promise<SecretMeta> {
    try {
      return await refreshOnce(t, meta, by);
    } catch (e) {
      await o.audit(t, meta.name, by, {
        name: meta.name,
        connector: meta.connector?.name ?? null,
        code: CapstanError.is(e) ? e.code : 'error',
        reason: (CapstanError.is(e) ? e.message : 'refresh failed').slice(0, 300),
      });
      throw e;
    }
  }

  async function refreshOnce(t: TenantId, meta: SecretMeta, by: string): Promise<SecretMeta> {
    const connector = meta.connector;
    if (!connector || !REFRESHABLE_AUTH.has(connector.auth.type)) {
      throw new CredentialRefreshError(meta.name, connector?.name ?? '(none)', 'a refreshable secret needs a connector with an oauth2 auth strategy');
    }
    const refresher = registry[connector.auth.type];
    if (!refresher) throw new CredentialRefreshError(meta.name, connector.name, `no refresher for auth ${connector.auth.type}`);
    const got = await refresher({
      tenant: t,
      name: meta.name,
      connector,
      endpoints: { allow: o.allow, dns: [] },
      // Only a secret stored with this very connector (the admin bound it to it) is sent to
      // its token endpoint: a connector cannot name any other secret of the tenant.
      read: async (name) => {
        const ref = (await store.describe(t, [name])).get(name);
        if (!ref) throw new CredentialRefreshError(meta.name, connector.name, `secret ${name} does not exist`);
        if (ref.connector?.name !== connector.name || tokenUrlOf(ref.connector) !== tokenUrlOf(connector)) {
          throw new CredentialRefreshError(meta.name, connector.name, `secret ${name} is not bound to connector ${connector.name} (store it with this connector to let it use it)`);
        }
        return (await store.read(t, [name]))[name] as string;
      },
    });
    // A rotated refresh token replaces the old one first: the issuer has already invalidated it.
    for (const [name, value] of Object.entries(got.updates ?? {})) {
      await store.rotate(t, name, enc.encode(checkValue(name, enc.encode(value), maxBytes)), { by });
    }
    const next = await store.rotate(t, meta.name, enc.encode(checkValue(meta.name, enc.encode(got.value), maxBytes)), {
      by,
      refreshed: true,
      expectVersion: meta.version,
      ...(got.expiresInMs !== undefined ? { expiresInMs: got.expiresInMs } : {}),
    });
    if (next) log.info({ tenant: t, secret: meta.name, version: next.version, connector: connector.name }, 'refreshed a credential');
    // Another instance refreshed it first: theirs is as fresh as ours would have been.
    return next ?? (await store.describe(t, [meta.name])).get(meta.name) ?? meta;
  }

  function once(t: TenantId, meta: SecretMeta, by: string): Promise<SecretMeta> {
    const key = `${t}/${meta.name}`;
    let p = inflight.get(key);
    if (!p) {
      p = refresh(t, meta, by).finally(() => inflight.delete(key));
      inflight.set(key, p);
    }
    return p;
  }

  return {
    async refreshDue(t, metas) {
      const due = [...metas].filter((m) => m.refreshDue);
      await Promise.all(
        due.map(async (m) => {
          try {
            await once(t, m, SERVICE_ACTOR);
          } catch (e) {
            const code = CapstanError.is(e) ? e.code : undefined;
            // Still valid: lease what there is and try again at the next issue.
            if (!m.expired) {
              log.warn({ tenant: t, secret: m.name, code, reason: CapstanError.is(e) ? e.message : String(e) }, 'refresh failed; the current value is still valid');
              return;
            }
            throw e;
          }
        }),
      );
    },
    refreshNow: (t, meta, by) => once(t, meta, by),
  };
}
