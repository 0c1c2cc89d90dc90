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
import { promises as dns } from 'node:dns';
import { BlockList, connect, isIP, type Socket } from 'node:net';
import { networkInterfaces } from 'node:os';
import type { AuditSink, Logger } from '@capstan/kit';
import { CapstanError, ErrorCode, type RunId, type TenantId, AuditKind } from '@capstan/schemas';
import type { RunnerChannel, TunnelFrame } from './channel.js';

/** Ranges a sandbox never reaches unless the allow-list names them, with the reason given. */
const REFUSED: readonly (readonly [string, number, 'ipv4' | 'ipv6', string])[] = [
  ['0.0.0.0', 8, 'ipv4', 'unspecified'],
  ['10.0.0.0', 8, 'ipv4', 'private'],
  ['100.64.0.0', 10, 'ipv4', 'private (shared address space)'],
  ['127.0.0.0', 8, 'ipv4', 'loopback'],
  ['169.254.0.0', 16, 'ipv4', 'link-local (metadata)'],
  ['172.16.0.0', 12, 'ipv4', 'private'],
  ['192.0.0.0', 24, 'ipv4', 'reserved'],
  ['192.0.2.0', 24, 'ipv4', 'reserved (documentation)'],
  ['192.168.0.0', 16, 'ipv4', 'private'],
  ['198.18.0.0', 15, 'ipv4', 'reserved (benchmarking)'],
  ['198.51.100.0', 24, 'ipv4', 'reserved (documentation)'],
  ['203.0.113.0', 24, 'ipv4', 'reserved (documentation)'],
  ['224.0.0.0', 4, 'ipv4', 'multicast'],
  ['240.0.0.0', 4, 'ipv4', 'reserved'],
  ['::', 128, 'ipv6', 'unspecified'],
  ['::1', 128, 'ipv6', 'loopback'],
  ['64:ff9b::', 96, 'ipv6', 'NAT64 (embeds an IPv4 address)'],
  ['64:ff9b:1::', 48, 'ipv6', 'NAT64 (embeds an IPv4 address)'],
  ['100::', 64, 'ipv6', 'reserved (discard)'],
  ['2001:db8::', 32, 'ipv6', 'reserved (documentation)'],
  ['2002::', 16, 'ipv6', '6to4 (embeds an IPv4 address)'],
  ['fc00::', 7, 'ipv6', 'private (unique local)'],
  ['fe80::', 10, 'ipv6', 'link-local'],
  ['fec0::', 10, 'ipv6', 'site-local'],
  ['ff00::', 8, 'ipv6', 'multicast'],
];

const refusedLists = REFUSED.map(([net, prefix, type, reason]) => {
  const list = new BlockList();
  list.addSubnet(net, prefix, type);
  return { list, reason };
});

/** An admin allow-list entry: an address or a CIDR block, v4 or v6. */
export interface AllowEntry {
  readonly address: string;
  readonly prefix: number;
  readonly type: 'ipv4' | 'ipv6';
}

/** Parses `SANDBOX_EGRESS_ALLOW` (comma-separated addresses and CIDR blocks); problems are pushed, not thrown. */
export function parseAllowList(raw: string, problems: string[]): AllowEntry[] {
  const out: AllowEntry[] = [];
  for (const item of raw.split(',').map((s) => s.trim()).filter(Boolean)) {
    const [address = '', bits] = item.split('/');
    const v = isIP(address);
    const max = v === 4 ? 32 : 128;
    const prefix = bits === undefined ? max : Number(bits);
    if (v === 0 || !Number.isInteger(prefix) || prefix < 0 || prefix > max || (bits !== undefined && !/^\d+$/.test(bits))) {
      problems.push(`SANDBOX_EGRESS_ALLOW: ${JSON.stringify(item)} is not an IP address or CIDR block`);
      continue;
    }
    out.push({ address, prefix, type: v === 4 ? 'ipv4' : 'ipv6' });
  }
  return out;
}

/** Parses `SANDBOX_EGRESS_DNS` (comma-separated `ip` or `ip:port`, `[ipv6]:port`). */
export function parseDnsServers(raw: string, problems: string[]): string[] {
  const out: string[] = [];
  for (const item of raw.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)|([0-9a-fA-F:]+))(?::(\d{1,5}))?$/.exec(item);
    const host = m?.[1] ?? m?.[2] ?? m?.[3] ?? '';
    // A bare IPv6 address has colons of its own: only the bracketed form takes a port.
    const port = m?.[3] && m[4] ? undefined : m?.[4];
    if (!m || isIP(host) === 0 || (port !== undefined && (Number(port) < 1 || Number(port) > 65535))) {
      problems.push(`SANDBOX_EGRESS_DNS: ${JSON.stringify(item)} is not an IP address with an optional port`);
      continue;
    }
    out.push(item);
  }
  return out;
}

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

/** Why `address` may not be reached (`loopback`, `private`, `this host`, …), or undefined when it may. */
export function refusalOf(address: string, allow: readonly AllowEntry[], hostAddresses: ReadonlySet<string> = ownAddresses()): string | undefined {
  const v = isIP(address);
  if (v === 0) return 'not an IP address';
  const type = v === 4 ? 'ipv4' : 'ipv6';
  const allowed = new BlockList();
  for (const a of allow) allowed.addSubnet(a.address, a.prefix, a.type);
  if (allow.length > 0 && allowed.check(address, type)) return undefined;
  for (const { list, reason } of refusedLists) if (list.check(address, type)) return reason;
  if (hostAddresses.has(normalise(address))) return 'this host';
  return undefined;
}

/** The addresses of this host's own interfaces (docker0 and friends included), normalised. */
export function ownAddresses(): Set<string> {
  const out = new Set<string>();
  for (const list of Object.values(networkInterfaces())) for (const i of list ?? []) out.add(normalise(i.address.split('%')[0] ?? i.address));
  return out;
}

/** IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is its IPv4 address; everything else lower-case. */
function normalise(address: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return (m?.[1] ?? address).toLowerCase();
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
export async function resolveChecked(host: string, rules: Pick<EgressRules, 'allow' | 'dns'>): Promise<{ address: string; family: 4 | 6 }> {
  let addresses: { address: string; family: number }[];
  if (isIP(host)) addresses = [{ address: host, family: isIP(host) }];
  else {
    try {
      addresses = await lookup(host, rules.dns);
    } catch (e) {
      throw new EgressRefusedError(`${host} does not resolve (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
    }
  }
  if (addresses.length === 0) throw new EgressRefusedError(`${host} does not resolve`);
  const own = ownAddresses();
  for (const a of addresses) {
    const why = refusalOf(a.address, rules.allow, own);
    if (why) throw new EgressRefusedError(`${host} resolves to ${a.address} (${why}), which sandboxes may not reach`);
  }
  const first = addresses[0] as { address: string; family: number };
  return { address: first.address, family: first.family === 6 ? 6 : 4 };
}

async function lookup(host: string, servers: readonly string[]): Promise<{ address: string; family: number }[]> {
  if (servers.length === 0) return dns.lookup(host, { all: true, verbatim: true });
  const r = new dns.Resolver({ timeout: 3000, tries: 2 });
  r.setServers([...servers]);
  const [v4, v6] = await Promise.allSettled([r.resolve4(host), r.resolve6(host)]);
  const out = [...(v4.status === 'fulfilled' ? v4.value.map((address) => ({ address, family: 4 })) : []), ...(v6.status === 'fulfilled' ? v6.value.map((address) => ({ address, family: 6 })) : [])];
  if (out.length === 0 && v4.status === 'rejected') throw v4.reason as Error;
  return out;
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
export function openTunnels(channel: RunnerChannel, grant: ReadonlySet<string>, rules: EgressRules, audit: AuditSink, scope: TunnelScope, log: Logger): { onFrame: (f: TunnelFrame) => void; close: () => void; stats: TunnelStats } {
  const sockets = new Map<number, Socket>();
  const stats: TunnelStats = { connections: 0, refused: 0, bytes: 0, capped: false };
  let closed = false;

  const refuse = (cid: number, target: string, code: string, reason: string) => {
    stats.refused++;
    log.warn({ target, code, reason }, 'egress denied');
    void channel.send({ t: 'conn.err', cid, code }).catch(() => {});
    // The refusal is recorded too, but nothing waits on it: nothing was reached.
    void audit
      .appendIntent({ tenant: scope.tenant, runId: scope.runId, kind: AuditKind.EgressDenied, actor: scope.actor, key: connectionKey(scope, cid), detail: { step: scope.step, attempt: scope.attempt, sandbox: scope.sandbox, target, code, reason } })
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
    if (!grant.has(`${host}:${port}`)) return refuse(f.cid, target, ErrorCode.EgressDenied, 'not in the step\'s grant');
    if (stats.capped) return refuse(f.cid, target, ErrorCode.EgressDenied, 'the attempt\'s egress byte cap is reached');
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
      channel.send({ t: 'data', cid: f.cid, d: b.toString('base64') }).then(() => sock.resume(), () => sock.destroy());
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
