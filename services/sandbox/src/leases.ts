/**
 * Where a sandbox's identity comes from. The worker and the orchestrator only ever hold key
 * names; the sandbox service claims and redeems a lease for exactly the attempt's keys and
 * injects the values into the tool runner. `natsLeases` asks the secrets-lease service;
 * `fileLeases` reads a local file (for tests).
 */
import { readFile } from 'node:fs/promises';
import { claimLease, redeemValues, type TenantConnection } from '@capstan/kit';
import { CapstanError, ErrorCode, isPlainObject, type RunId, type TenantId } from '@capstan/schemas';

export interface LeaseScope {
  readonly tenant: TenantId;
  readonly runId: RunId;
  readonly step: string;
  readonly attempt: number;
  readonly keys: readonly string[];
  /** The lease the worker had issued (the secrets-lease service checks its scope). */
  readonly leaseId?: string;
  /** The container that claims it. */
  readonly sandbox: string;
}

export interface LeaseRedeemer {
  /** Values of exactly `scope.keys`. @throws CapstanError (`secret_not_found`, …) naming keys, never values. */
  redeem(scope: LeaseScope): Promise<Record<string, string>>;
}

/** No secrets at all: a mode-2 step fails with a clear error. */
export const noLeases: LeaseRedeemer = {
  redeem: (s) => Promise.reject(new CapstanError(ErrorCode.SecretNotFound, `no secrets store is configured on this node; step ${s.step} needs ${s.keys.join(', ')}`, false)),
};

/**
 * Leases from the secrets-lease service: claimed for the attempt's container first (the
 * lease's TTL counts from the claim), then redeemed with a one-time key pair, so the values
 * travel sealed to this process and are opened only here.
 */
export function natsLeases(connection: (t: TenantId) => Pick<TenantConnection, 'nc' | 'signer'> | undefined): LeaseRedeemer {
  return {
    async redeem(s) {
      const tc = connection(s.tenant);
      if (!tc) throw new CapstanError(ErrorCode.Unavailable, 'not connected to NATS', true);
      const { nc, signer } = tc;
      if (!s.leaseId) throw new CapstanError(ErrorCode.InvalidArgument, `step ${s.step} needs ${s.keys.join(', ')} but its worker sent no lease`, false);
      const scope = { leaseId: s.leaseId, runId: s.runId, step: s.step, attempt: s.attempt };
      // Signed as this service: the lease is bound to the sandbox service's registered key.
      const o = signer ? { signer } : {};
      await claimLease(nc, s.tenant, { ...scope, sandbox: s.sandbox }, o);
      const values = await redeemValues(nc, s.tenant, scope, o);
      const missing = s.keys.filter((k) => values[k] === undefined);
      if (missing.length > 0) throw new CapstanError(ErrorCode.SecretNotFound, `the lease holds no ${missing.join(', ')}`, false);
      return values;
    },
  };
}

/**
 * A JSON file `{ "<tenant>": { "KEY": "value" } }`, read at each redemption so it can be
 * edited while the service runs. For development and tests only: values sit on disk in
 * clear.
 */
export function fileLeases(path: string): LeaseRedeemer {
  return {
    async redeem(s) {
      let doc: unknown;
      try {
        doc = JSON.parse(await readFile(path, 'utf8'));
      } catch (e) {
        throw new CapstanError(ErrorCode.SecretNotFound, `cannot read the secrets file ${path}: ${(e as NodeJS.ErrnoException).code ?? 'not JSON'}`, false);
      }
      const table = isPlainObject(doc) ? doc[s.tenant] : undefined;
      const out: Record<string, string> = {};
      const missing: string[] = [];
      for (const k of s.keys) {
        const v = isPlainObject(table) ? table[k] : undefined;
        if (typeof v === 'string') out[k] = v;
        else missing.push(k);
      }
      if (missing.length > 0) throw new CapstanError(ErrorCode.SecretNotFound, `tenant ${s.tenant} has no secret named ${missing.join(', ')}`, false);
      return out;
    },
  };
}
