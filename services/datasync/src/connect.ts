/**
 * Opening a tenant's Postgres (a source, or a destination) from its connection spec.
 *
 * Credentials come from a lease, redeemed here with a one-time key, for exactly the scope
 * asked (a run's step and attempt, or a preview's own id): the password or private key
 * lives in this process only as long as the connection handshake needs it, and is never
 * logged, returned or put in an error. Every value comes back as text (no type parsing):
 * the pipeline moves text forms from one Postgres to another and the preview shows them.
 */
import { isIP } from 'node:net';
import pg from 'pg';
import { CapstanError, ErrorCode, PostgresAuth, TlsMode, type ConnectionSpec, type LeaseRequest, type RunId, type TenantId } from '@capstan/schemas';
import { issueLease, redeemValues, type NatsConnection, type Signer } from '@capstan/kit';

export interface LeaseScope {
  readonly runId: RunId;
  readonly step: string;
  readonly attempt: number;
}

export interface ConnectOptions {
  readonly nc: NatsConnection;
  /** Signs the lease requests as this service: a lease it issues is bound to it. */
  readonly signer?: Signer | undefined;
  readonly tenant: TenantId;
  readonly scope: LeaseScope;
  readonly connectTimeoutMs: number;
  /** `application_name`, so the tenant's DBA sees who is connected. */
  readonly application: string;
  /** A preview's warrant: the person's signed request as it arrived (a pipeline step's is its run's record). */
  readonly preview?: LeaseRequest['preview'];
}

const textOnly = { getTypeParser: () => (v: string | Buffer) => (typeof v === 'string' ? v : v.toString('utf8')) } as unknown as pg.CustomTypesConfig;

/** Codes Postgres answers with when the credentials or the role are wrong: not worth retrying. */
const AUTH_CODES = new Set(['28P01', '28000', '3D000', '42501']);

/**
 * A connected client; its `end()` closes it. The caller cancels by ending it.
 * @throws CapstanError `source_unavailable` (retryable: unreachable, refused, timed out), `source_failed` (credentials, database, TLS refused)
 */
export async function openPostgres(spec: ConnectionSpec, o: ConnectOptions): Promise<pg.Client> {
  const keys = spec.auth.type === PostgresAuth.UsernamePassword ? (spec.auth.passwordKey ? [spec.auth.passwordKey] : []) : [spec.auth.privateKeyKey];
  let values: Record<string, string> = {};
  if (keys.length > 0) {
    const signed = o.signer ? { signer: o.signer } : {};
    const grant = await issueLease(
      o.nc,
      o.tenant,
      { runId: o.scope.runId, step: o.scope.step, attempt: o.scope.attempt, keys, ttlMs: 30_000, ...(o.preview ? { preview: o.preview } : {}) },
      signed,
    );
    values = await redeemValues(o.nc, o.tenant, { leaseId: grant.leaseId, runId: o.scope.runId, step: o.scope.step, attempt: o.scope.attempt }, signed);
  }
  const ssl: pg.ClientConfig['ssl'] =
    spec.tls.mode === TlsMode.Disable
      ? false
      : {
          rejectUnauthorized: spec.tls.mode === TlsMode.VerifyFull,
          ...(spec.tls.ca ? { ca: spec.tls.ca } : {}),
          // The name the certificate must carry; an address is checked against the certificate's IP entries.
          ...(spec.tls.mode === TlsMode.VerifyFull && (spec.tls.serverName || !isIP(spec.host)) ? { servername: spec.tls.serverName ?? spec.host } : {}),
          ...(spec.auth.type === PostgresAuth.Keypair ? { cert: spec.auth.certificate, key: values[spec.auth.privateKeyKey] } : {}),
        };
  const client = new pg.Client({
    host: spec.host,
    port: spec.port,
    database: spec.database,
    user: spec.auth.username,
    ...(spec.auth.type === PostgresAuth.UsernamePassword && spec.auth.passwordKey ? { password: values[spec.auth.passwordKey] } : {}),
    ssl,
    connectionTimeoutMillis: o.connectTimeoutMs,
    application_name: o.application,
    types: textOnly,
  });
  values = {};
  // A connection dropped while idle must not end the process; the query in flight fails anyway.
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (e) {
    await client.end().catch(() => undefined);
    throw connectError(e, spec);
  } finally {
    // Nothing of the credential stays reachable from the client's config.
    Object.assign(client as unknown as { password?: string }, { password: undefined });
  }
  // Values as the pipeline and the preview show them: UTC, ISO dates, floats exact.
  await client.query("set TimeZone = 'UTC'; set DateStyle = 'ISO, YMD'; set IntervalStyle = 'iso_8601'; set extra_float_digits = 3");
  return client;
}

function connectError(e: unknown, spec: ConnectionSpec): CapstanError {
  if (CapstanError.is(e)) return e;
  const code = (e as { code?: string }).code ?? '';
  // The driver's message names the host, user or database at most; never a password.
  const why = (e as Error).message.split('\n')[0]?.slice(0, 300) ?? 'unknown';
  if (AUTH_CODES.has(code) || /certificate|SSL|self.signed|does not support SSL/i.test(why)) {
    return new CapstanError(ErrorCode.SourceFailed, `cannot connect to ${spec.host}:${spec.port}/${spec.database} as ${spec.auth.username}: ${why}`, false);
  }
  return new CapstanError(ErrorCode.SourceUnavailable, `cannot reach ${spec.host}:${spec.port}/${spec.database}: ${why}`, true);
}

/** A statement the source or destination refused, as a typed error (retryable only when the server went away). */
export function statementError(e: unknown, what: string): CapstanError {
  if (CapstanError.is(e)) return e;
  const code = (e as { code?: string }).code ?? '';
  const why = (e as Error).message.split('\n')[0]?.slice(0, 300) ?? 'unknown';
  if (code === '57014') return new CapstanError(ErrorCode.QueryTimeout, `${what}: cancelled (statement timeout): ${why}`, false);
  if (code.startsWith('08') || code === '57P01' || code === '57P03' || /ECONNRESET|ECONNREFUSED|Connection terminated/i.test(why)) {
    return new CapstanError(ErrorCode.SourceUnavailable, `${what}: ${why}`, true);
  }
  return new CapstanError(ErrorCode.SourceFailed, `${what}: ${why}${code ? ` (${code})` : ''}`, false);
}
