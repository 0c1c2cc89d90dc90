/**
 * The role permissions as data: derived from the names module, confined to their tenant, and
 * never the broad grants nats-server advisories were about. What the server does with them is
 * tested in int/tenancy.int.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { inboxPrefixFor, JsApi, permissionsFor, Platform, platformPermissions, Role, SERVICE_ROLES, Streams, TENANT_ROLES, type TenantId } from '@capstan/schemas';

const USER = `U${'A'.repeat(55)}`;
const inbox = inboxPrefixFor(USER);
const roles = [...TENANT_ROLES, Role.Leaf, ...SERVICE_ROLES];
// A leaf carries the replies of its local users (here the same user).
const scope = { pools: ['default', 'gpu'], workerId: 'w1', localUsers: [USER] };
/** The platform domain's form of an API subject read as the plain one. */
const plain = (s: string) => s.replace(`$JS.${Platform.jsDomain}.API.`, '$JS.API.');

describe('permissions', () => {
  it('permissions - no role but the admin holds a full wildcard, the whole JetStream API, or stream/consumer management', () => {
    for (const t of ['acme', 'b-2'] as TenantId[]) {
      for (const role of roles) {
        const p = permissionsFor(role, t, inbox, scope);
        for (const s of [...p.pub, ...p.sub].map(plain)) {
          expect(s, `${role} ${s}`).not.toMatch(/^>$|^\$JS\.>|^\$JS\.API\.>|^\$SYS|^_INBOX\.>$/);
          expect(s, `${role} ${s}`).not.toMatch(/\$JS\.API\.(STREAM\.(CREATE|UPDATE|DELETE|PURGE|MSG\.DELETE|RESTORE|SNAPSHOT)|CONSUMER\.(CREATE|DURABLE|DELETE)|ACCOUNT)/);
        }
      }
    }
  });

  it("permissions - every subject names its own tenant (token or stream), the user's own inbox, or account info", () => {
    const t = 'acme' as TenantId;
    const mine = (s: string) =>
      s.startsWith(`cap.${t}.`) ||
      s.startsWith(`${inbox}.`) ||
      s === '$JS.API.INFO' ||
      [
        Streams.runs(t),
        Streams.commands(t),
        Streams.work(t),
        Streams.deadLetters(t),
        Streams.fleet(t),
        Streams.policy(t),
        Streams.triggers(t),
        Streams.seen(t),
        Streams.catalog(t),
        Streams.leases(t),
      ].some((stream) => s.includes(`.${stream}`) && !s.includes(`.${stream}x`));
    for (const role of roles) {
      const p = permissionsFor(role, t, inbox, scope);
      for (const s of [...p.pub, ...p.sub].map(plain)) expect(mine(s), `${role}: ${s}`).toBe(true);
    }
  });

  it('permissions - only the orchestrator appends, only the policy service answers policy requests, only the sandbox and the datasync service redeem', () => {
    const t = 'acme' as TenantId;
    const who = (pred: (p: ReturnType<typeof permissionsFor>) => boolean) => roles.filter((r) => pred(permissionsFor(r, t, inbox, scope)));
    expect(who((p) => p.pub.includes(`cap.${t}.runs.*`))).toEqual([Role.Orchestrator]);
    expect(who((p) => p.pub.includes(`cap.${t}.work.*`))).toEqual([Role.Orchestrator]);
    expect(who((p) => p.sub.includes(`cap.${t}.svc.policy.*`))).toEqual([Role.Policy]);
    // The datasync service redeems a connection's credentials for the handshake it makes itself.
    expect(who((p) => p.pub.includes(`cap.${t}.svc.secrets.redeem`))).toEqual([Role.Sandbox, Role.Datasync]);
    expect(who((p) => p.sub.includes(`cap.${t}.svc.datasync.*`))).toEqual([Role.Datasync]);
    expect(who((p) => p.pub.includes(`cap.${t}.catalog.>`))).toEqual([Role.Datasync]);
    expect(who((p) => p.sub.includes(`cap.${t}.svc.sandbox.exec`))).toEqual([Role.Sandbox]);
    // A worker pulls exactly its pools.
    const w = permissionsFor(Role.Worker, t, inbox, { pools: ['gpu'], workerId: 'w1' });
    const next = `$JS.API.CONSUMER.MSG.NEXT.${Streams.work(t)}.work-gpu`;
    expect(w.pub.filter((s) => s.includes('CONSUMER.MSG.NEXT'))).toEqual([next, JsApi.inDomain(next, Platform.jsDomain)]);
    expect(() => permissionsFor(Role.Worker, t, inbox, { pools: [] })).toThrow(/at least one pool/);
    expect(() => permissionsFor(Role.Worker, t, inbox, { pools: ['Bad Pool'] })).toThrow();
  });

  it('permissions - a platform service may read the tenant registry and nothing else in the platform account', () => {
    const p = platformPermissions(inbox);
    expect(p.pub.every((s) => s === '$JS.API.INFO' || s.includes('CAPSTAN_TENANTS'))).toBe(true);
    expect(p.sub).toEqual([`${inbox}.>`, 'capstan.tenants.*']);
    expect(() => inboxPrefixFor('not-a-key')).toThrow();
  });
});
