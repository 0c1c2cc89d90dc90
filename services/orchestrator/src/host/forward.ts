/**
 * Handing a command to the instance that owns its run's partition. Every instance pulls the
 * tenant's one command consumer; a command whose run is in a partition another instance owns
 * is sent to that instance (`cap.<t>.svc.orch.<instance>`, core NATS request) with the
 * consumer's acknowledgement subject, and the owner acknowledges it on the consumer itself
 * once it has acted. Nothing is acknowledged by the instance that pulled it, so a command
 * whose owner dies is redelivered after the ack wait, as before.
 *
 * Why not a consumer per partition: the run id is in the command's body, not its subject
 * (clients, workers, ingress and timers publish `cap.<t>.cmd.<verb>`), and a submit without
 * a run id gets one only from its stream sequence, so the server cannot route by partition
 * without every publisher changing. The hand-over costs one core NATS round trip, and none
 * with a single instance.
 */
import type { JsMsg } from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { headers as natsHeaders } from '@nats-io/transport-node';
import { Consumers, Headers, Streams, Subjects, type TenantId } from '@capstan/schemas';
import type { Logger } from '@capstan/kit';
import type { CommandMsg } from './types.js';

const ACCEPTED = '1';
const REFUSED = '0';
const ACK = new TextEncoder().encode('+ACK');
const NAK = new TextEncoder().encode('-NAK');

/** Sends `msg` to `owner`; true when the owner took it (it acknowledges it from then on). */
export async function forwardCommand(nc: NatsConnection, t: TenantId, owner: string, msg: JsMsg, timeoutMs: number): Promise<boolean> {
  // The client's JsMsg keeps the acknowledgement subject as the message's reply subject.
  const ackSubject = (msg as unknown as { reply?: string }).reply;
  if (!ackSubject) return false;
  const h = natsHeaders();
  for (const [k, vs] of msg.headers ?? []) for (const v of vs) h.append(k, v);
  h.set(Headers.SourceSubject, msg.subject);
  h.set(Headers.AckSubject, ackSubject);
  try {
    const answer = await nc.request(Subjects.orchestratorInbox(t, owner), msg.data, { headers: h, timeout: timeoutMs });
    return answer.string() === ACCEPTED;
  } catch {
    return false;
  }
}

/**
 * Takes commands handed to this instance. `accept` returns false when the command's run is
 * not in a partition this instance owns (any more): the sender then leaves it for redelivery.
 */
export function serveForwarded(nc: NatsConnection, t: TenantId, instance: string, accept: (msg: CommandMsg) => Promise<boolean>, log: Logger): Subscription {
  return nc.subscribe(Subjects.orchestratorInbox(t, instance), {
    callback: (err, m) => {
      if (err) return;
      const subject = m.headers?.get(Headers.SourceSubject) ?? '';
      const ackSubject = m.headers?.get(Headers.AckSubject) ?? '';
      const info = deliveryInfo(ackSubject, t);
      // Only orchestrators may publish here (permissions): anything malformed is a bug, not an attack.
      if (!info || !subject.startsWith(Subjects.allCommands(t).slice(0, -1))) {
        log.warn({ subject, ackSubject }, 'malformed hand-over ignored');
        m.respond(REFUSED);
        return;
      }
      const cmd: CommandMsg = {
        subject,
        data: m.data,
        headers: m.headers,
        info,
        ack: () => nc.publish(ackSubject, ACK),
        nak: (millis?: number) => nc.publish(ackSubject, millis ? new TextEncoder().encode(`-NAK ${JSON.stringify({ delay: millis * 1_000_000 })}`) : NAK),
      } as CommandMsg;
      accept(cmd).then(
        (ok) => m.respond(ok ? ACCEPTED : REFUSED),
        (e: unknown) => {
          log.warn({ err: e, subject }, 'handed-over command not taken');
          m.respond(REFUSED);
        },
      );
    },
  });
}

/** Delivery details from an acknowledgement subject (`$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>`). */
function deliveryInfo(ackSubject: string, t: TenantId): CommandMsg['info'] | undefined {
  const tokens = ackSubject.split('.');
  // Servers may add a domain and account hash after ACK (11+ tokens) or not (9).
  const base = tokens.length >= 11 ? 6 : tokens.length === 9 ? 4 : -1;
  if (base < 0 || tokens[0] !== '$JS' || tokens[1] !== 'ACK') return undefined;
  if (tokens[base - 2] !== Streams.commands(t) || tokens[base - 1] !== Consumers.orchestrator) return undefined;
  const deliveryCount = Number(tokens[base]);
  const streamSequence = Number(tokens[base + 1]);
  const timestampNanos = Number(tokens[base + 3]);
  if (![deliveryCount, streamSequence, timestampNanos].every(Number.isFinite)) return undefined;
  return { deliveryCount, redelivered: deliveryCount > 1, streamSequence, timestampNanos };
}
