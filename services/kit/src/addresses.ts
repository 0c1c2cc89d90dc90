/**
 * Which network addresses a Capstan process may reach on a tenant's behalf. One
 * classification for every place that connects somewhere a tenant named: a sandbox's egress
 * (services/sandbox) and a credential refresher's token endpoint (services/secrets-lease, credentials.ts).
 * Loopback, private, link-local (the metadata address), multicast, reserved and this host's
 * own addresses are refused unless an admin allow-list names them. A name is resolved once,
 * every address it resolves to is checked, and the caller connects to the address that was
 * checked, never to the name again (a name that answers differently the second time, DNS
 * rebinding, reaches nothing new).
 */
import { promises as dns } from 'node:dns';
import { BlockList, isIP } from 'node:net';
import { networkInterfaces } from 'node:os';

/** Ranges never reached unless the allow-list names them, with the reason given. */
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

/** Parses an allow-list setting (comma-separated addresses and CIDR blocks, named `setting` in problems); problems are pushed, not thrown. */
export function parseAllowList(raw: string, problems: string[], setting = 'SANDBOX_EGRESS_ALLOW'): AllowEntry[] {
  const out: AllowEntry[] = [];
  for (const item of raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const [address = '', bits] = item.split('/');
    const v = isIP(address);
    const max = v === 4 ? 32 : 128;
    const prefix = bits === undefined ? max : Number(bits);
    if (v === 0 || !Number.isInteger(prefix) || prefix < 0 || prefix > max || (bits !== undefined && !/^\d+$/.test(bits))) {
      problems.push(`${setting}: ${JSON.stringify(item)} is not an IP address or CIDR block`);
      continue;
    }
    out.push({ address, prefix, type: v === 4 ? 'ipv4' : 'ipv6' });
  }
  return out;
}

/** Parses `SANDBOX_EGRESS_DNS` (comma-separated `ip` or `ip:port`, `[ipv6]:port`). */
export function parseDnsServers(raw: string, problems: string[]): string[] {
  const out: string[] = [];
  for (const item of raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
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

/** What decides reachability: the admin allow-list and the resolver servers (empty: the system resolver). */
export interface AddressRules {
  readonly allow: readonly AllowEntry[];
  readonly dns: readonly string[];
}

/**
 * Resolves `host` on this side and checks every address; resolves with the one to connect
 * to. @throws what `refuse` makes, naming the reason (nothing was connected)
 */
export async function resolveChecked(host: string, rules: AddressRules, refuse: (message: string) => Error): Promise<{ address: string; family: 4 | 6 }> {
  let addresses: { address: string; family: number }[];
  if (isIP(host)) addresses = [{ address: host, family: isIP(host) }];
  else {
    try {
      addresses = await lookup(host, rules.dns);
    } catch (e) {
      throw refuse(`${host} does not resolve (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
    }
  }
  if (addresses.length === 0) throw refuse(`${host} does not resolve`);
  const own = ownAddresses();
  for (const a of addresses) {
    const why = refusalOf(a.address, rules.allow, own);
    if (why) throw refuse(`${host} resolves to ${a.address} (${why}), which may not be reached from here`);
  }
  const first = addresses[0] as { address: string; family: number };
  return { address: first.address, family: first.family === 6 ? 6 : 4 };
}

async function lookup(host: string, servers: readonly string[]): Promise<{ address: string; family: number }[]> {
  if (servers.length === 0) return dns.lookup(host, { all: true, verbatim: true });
  const r = new dns.Resolver({ timeout: 3000, tries: 2 });
  r.setServers([...servers]);
  const [v4, v6] = await Promise.allSettled([r.resolve4(host), r.resolve6(host)]);
  const out = [
    ...(v4.status === 'fulfilled' ? v4.value.map((address) => ({ address, family: 4 })) : []),
    ...(v6.status === 'fulfilled' ? v6.value.map((address) => ({ address, family: 6 })) : []),
  ];
  if (out.length === 0 && v4.status === 'rejected') throw v4.reason as Error;
  return out;
}
