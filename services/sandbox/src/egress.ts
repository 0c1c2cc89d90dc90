/**
 * The host end of a sandbox's egress, and the rules that keep it from being pointed home.
 *
 * A step's grant names `host:port`s; the tool runner's local proxy asks for a connection by
 * name and this side decides. The name is resolved **here** (the system resolver, or the
 * servers of `SANDBOX_EGRESS_DNS`), every address it resolves to is checked, and the
 * connection goes to the address that was checked, never to the name again, so a name that
 * answers differently the second time (DNS rebinding) reaches nothing new. Loopback,
 * private, link-local (the metadata address), multicast, reserved and this host's own
 * addresses are refused unless the admin allow-list (`SANDBOX_EGRESS_ALLOW`) names them. A
 * name with any refused address is refused as a whole.
 *
 * Every connection is an audit row before it opens (audit first): if the row cannot be
 * written the connection is refused. Bytes both ways count against the attempt's cap; at
 * the cap every tunnel closes and later connections are refused. Names, addresses and
 * reasons only are logged and audited, never data.
 */
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { resolveChecked as resolveAddress, type AllowEntry, type AuditSink, type Logger } from '@capstan/kit';
export { parseAllowList, parseDnsServers, refusalOf, type AllowEntry } from '@capstan/kit';
import { AuditKind, CapstanError, ErrorCode, type RunId, type TenantId } from '@capstan/schemas';
import type { RunnerChannel, TunnelFrame } from './channel.js';

export interface EgressRules {
  readonly allow: readonly AllowEntry[];
  /** Resolver servers; empty: the system resolver (`getaddrinfo`, /etc/hosts included). */
  readonly dns: readonly string[];
  /** Bytes both ways per attempt, over all its connections. */
  readonly maxBytes: number;
  /** Connections open at once per attempt. */
  readonly maxConnections: number;
  readonly connectTimeoutMs: number;
}

export class EgressRefusedError extends CapstanError {
  constructor(message: string) {
    super(ErrorCode.EgressDenied, message, false);
  }
}

/**
 * Resolves `host` on this side and checks every address; resolves with the one to connect
 * to. @throws EgressRefusedError naming the reason (never reached: nothing was connected)
 */
export function resolveChecked(host: string, rules: Pick<EgressRules, 'allow' | 'dns'>): Promise<{ address: string; family: 4 | 6 }> {
  return resolveAddress(host, rules, (m) => new EgressRefusedError(m.replace('which may not be reached from here', 'which sandboxes may not reach')));
}

export interface TunnelScope {
  readonly tenant: TenantId;
  readonly runId: RunId;
  readonly step: string;
  readonly attempt: number;
  readonly sandbox: string;
  /** Who acts, in the audit log. */
  readonly actor: string;
}

export interface TunnelStats {
  connections: number;
  refused: number;
  bytes: number;
  /** The byte cap was reached: the attempt's tunnels were closed. */
  capped: boolean;
}

const HOST_PATTERN = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/;

/**
 * The handler of one attempt's tunnel frames. `grant` holds `host:port`s (lower-case);
 * anything else is refused before any resolution. Call `close()` when the attempt ends.
 */
export function openTunnels(
  channel: RunnerChannel,
  grant: ReadonlySet<string>,
  rules: EgressRules,
  audit: AuditSink,
  scope: TunnelScope,
  log: Logger,
): { onFrame: (f: TunnelFrame) => void; close: () => void; stats: TunnelStats } {
  const sockets = new Map<number, Socket>();
  const stats: TunnelStats = { connections: 0, refused: 0, bytes: 0, capped: false };
  let closed = false;

  const refuse = (cid: number, target: string, code: string, reason: string) => {
    stats.refused++;
    log.warn({ target, code, reason }, 'egress denied');
    void channel.send({ t: 'conn.err', cid, code }).catch(() => {});
    // The refusal is recorded too, but nothing waits on it: nothing was reached.
    void audit
      .appendIntent({
        tenant: scope.tenant,
        runId: scope.runId,
        kind: AuditKind.EgressDenied,
        actor: scope.actor,
        key: connectionKey(scope, cid),
        detail: { step: scope.step, attempt: scope.attempt, sandbox: scope.sandbox, target, code, reason },
      })
      .catch(() => {});
  };
  const count = (n: number): boolean => {
    stats.bytes += n;
    if (stats.bytes <= rules.maxBytes) return true;
    if (!stats.capped) {
      stats.capped = true;
      log.warn({ bytes: stats.bytes, cap: rules.maxBytes }, 'egress byte cap reached; closing every tunnel of the attempt');
      for (const s of sockets.values()) s.destroy();
    }
    return false;
  };

  const open = async (f: Extract<TunnelFrame, { t: 'conn' }>) => {
    const host = String(f.host).toLowerCase();
    const port = Number(f.port);
    const target = `${host.slice(0, 253)}:${Number.isInteger(port) ? port : '?'}`;
    if (!HOST_PATTERN.test(host) || !Number.isInteger(port) || port < 1 || port > 65535) return refuse(f.cid, target, ErrorCode.EgressDenied, 'not a host:port');
    if (!grant.has(`${host}:${port}`)) return refuse(f.cid, target, ErrorCode.EgressDenied, "not in the step's grant");
    if (stats.capped) return refuse(f.cid, target, ErrorCode.EgressDenied, "the attempt's egress byte cap is reached");
    if (sockets.size >= rules.maxConnections) return refuse(f.cid, target, ErrorCode.EgressDenied, `more than ${rules.maxConnections} connections at once`);
    let to: { address: string; family: 4 | 6 };
    try {
      to = await resolveChecked(host, rules);
    } catch (e) {
      return refuse(f.cid, target, ErrorCode.EgressDenied, (e as Error).message);
    }
    // Audit first: no row, no connection.
    try {
      await audit.appendIntent({
        tenant: scope.tenant,
        runId: scope.runId,
        kind: AuditKind.EgressConnect,
        actor: scope.actor,
        key: connectionKey(scope, f.cid),
        detail: { step: scope.step, attempt: scope.attempt, sandbox: scope.sandbox, target, address: to.address },
      });
    } catch (e) {
      return refuse(f.cid, target, CapstanError.is(e) ? e.code : ErrorCode.AuditUnavailable, 'the audit store did not record the connection');
    }
    if (closed) return;
    stats.connections++;
    const sock = connect({ host: to.address, port, family: to.family, timeout: rules.connectTimeoutMs });
    sockets.set(f.cid, sock);
    let connected = false;
    sock.once('connect', () => {
      connected = true;
      sock.setTimeout(0);
      log.info({ target, address: to.address }, 'egress connected');
      void channel.send({ t: 'conn.ok', cid: f.cid }).catch(() => sock.destroy());
    });
    sock.once('timeout', () => sock.destroy(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' })));
    sock.on('data', (b: Buffer) => {
      if (!count(b.length)) return;
      sock.pause();
      channel.send({ t: 'data', cid: f.cid, d: b.toString('base64') }).then(
        () => sock.resume(),
        () => sock.destroy(),
      );
    });
    const end = () => {
      if (sockets.delete(f.cid)) void channel.send({ t: 'end', cid: f.cid }).catch(() => {});
    };
    sock.on('end', end);
    sock.on('close', end);
    sock.on('error', (e: NodeJS.ErrnoException) => {
      if (connected) return;
      sockets.delete(f.cid);
      log.info({ target, address: to.address, code: e.code }, 'egress connection failed');
      void channel.send({ t: 'conn.err', cid: f.cid, code: e.code ?? 'connect_failed' }).catch(() => {});
    });
  };

  return {
    stats,
    onFrame(f) {
      if (closed) return;
      if (f.t === 'conn') void open(f);
      else if (f.t === 'data') {
        const b = Buffer.from(String(f.d), 'base64');
        if (count(b.length)) sockets.get(f.cid)?.write(b);
      } else sockets.get(f.cid)?.end();
    },
    close() {
      closed = true;
      for (const s of sockets.values()) s.destroy();
      sockets.clear();
    },
  };
}

/** One audit key per connection: the attempt's sandbox, the runner's connection id and a nonce. */
function connectionKey(scope: TunnelScope, cid: number): string {
  return `egress:${scope.sandbox}:${cid}:${randomBytes(6).toString('hex')}`;
}
