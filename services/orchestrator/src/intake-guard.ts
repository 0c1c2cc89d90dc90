/**
 * Answers submits that no stream will: a JetStream publish to `cap.<t>.cmd.submit` for a
 * malformed or unprovisioned tenant would otherwise just time out ("no responders"). This
 * core subscription replies in the PubAck error shape every JetStream client understands,
 * with a Capstan error code, so the submitter sees a typed error at once. Nothing is
 * stored anywhere for such a tenant.
 */
import type { JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { headers as natsHeaders } from '@nats-io/transport-node';
import { ErrorCode, Headers, isTenantId, Streams, Subjects, tenantTokenOf, TENANT_ID_PATTERN, type TenantId } from '@capstan/schemas';
import type { Logger } from '@capstan/kit';

export interface IntakeGuard {
  stop(): Promise<void>;
}

export function startIntakeGuard(nc: NatsConnection, jsm: JetStreamManager, log: Logger): IntakeGuard {
  const known = new Map<string, { exists: boolean; until: number }>();
  const exists = async (t: TenantId): Promise<boolean> => {
    const hit = known.get(t);
    if (hit && (hit.exists || hit.until > Date.now())) return hit.exists;
    const ok = await jsm.streams.info(Streams.commands(t)).then(
      () => true,
      () => false,
    );
    // Remember misses briefly only: a tenant may be provisioned at any moment.
    known.set(t, { exists: ok, until: Date.now() + 1000 });
    return ok;
  };
  const sub: Subscription = nc.subscribe(Subjects.anySubmit(), {
    queue: 'capstan-intake-guard',
    callback: (err, msg) => {
      if (err || !msg.reply) return;
      const token = tenantTokenOf(msg.subject) ?? '';
      void (async () => {
        let code: string;
        let description: string;
        if (!isTenantId(token)) {
          code = ErrorCode.InvalidTenantId;
          description = `invalid tenant id ${JSON.stringify(token.slice(0, 64))}: must match ${TENANT_ID_PATTERN.source}`;
        } else if (!(await exists(token))) {
          code = ErrorCode.UnknownTenant;
          description = `tenant ${token} is not provisioned (capstan tenant add ${token})`;
        } else {
          return; // the tenant's stream answers this one
        }
        log.info({ code, tenant: token.slice(0, 64) }, 'submit refused at intake');
        const h = natsHeaders();
        h.set(Headers.ErrorCode, code);
        msg.respond(JSON.stringify({ error: { code: code === ErrorCode.UnknownTenant ? 404 : 400, err_code: 0, description: `${code}: ${description}` } }), { headers: h });
      })();
    },
  });
  return {
    async stop() {
      await sub.drain();
    },
  };
}
