/**
 * A tiny DNS server on the loopback (UDP, A records only) for egress tests: each query is
 * answered by `answer(name, n)` (`n` counts this name's queries, from 1), so a test can
 * play a name that rebinds (a public address first, the loopback after). The sandbox
 * service uses it through `SANDBOX_EGRESS_DNS=127.0.0.1:<port>`.
 */
import { createSocket } from 'node:dgram';

export interface TestDns {
  readonly port: number;
  /** Queries per name, as asked. */
  readonly queries: ReadonlyMap<string, number>;
  close(): Promise<void>;
}

export async function startDns(answer: (name: string, n: number) => string | undefined): Promise<TestDns> {
  const queries = new Map<string, number>();
  const sock = createSocket('udp4');
  sock.on('message', (q, from) => {
    if (q.length < 17) return;
    const labels: string[] = [];
    let i = 12;
    while (i < q.length && q[i] !== 0) {
      const len = q[i] ?? 0;
      labels.push(q.subarray(i + 1, i + 1 + len).toString('latin1'));
      i += len + 1;
    }
    const question = q.subarray(12, i + 5);
    const type = q.readUInt16BE(i + 1);
    const name = labels.join('.').toLowerCase();
    const n = (queries.get(name) ?? 0) + 1;
    queries.set(name, n);
    const ip = type === 1 ? answer(name, n) : undefined;
    const known = type !== 1 || ip !== undefined;
    const header = Buffer.alloc(12);
    q.copy(header, 0, 0, 2);
    header.writeUInt16BE(known ? 0x8180 : 0x8183, 2); // a response, recursion available; NXDOMAIN when unknown
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(ip ? 1 : 0, 6);
    const parts = [header, question];
    if (ip) {
      const rr = Buffer.alloc(16);
      rr.writeUInt16BE(0xc00c, 0); // the name, by pointer to the question
      rr.writeUInt16BE(1, 2); // A
      rr.writeUInt16BE(1, 4); // IN
      rr.writeUInt32BE(0, 6); // TTL 0: never cached
      rr.writeUInt16BE(4, 10);
      ip.split('.').forEach((o, k) => rr.writeUInt8(Number(o), 12 + k));
      parts.push(rr);
    }
    sock.send(Buffer.concat(parts), from.port, from.address);
  });
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
  return {
    port: sock.address().port,
    queries,
    close: () => new Promise<void>((r) => sock.close(() => r())),
  };
}
