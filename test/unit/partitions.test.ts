/**
 * Run partitions: the hash every orchestrator must agree on, the lease bucket's subjects, and
 * who may write them (only orchestrators, and never the partition count).
 */
import { describe, expect, it } from 'vitest';
import { leasesStreamConfig } from '@capstan/kit';
import {
  DEFAULT_PARTITIONS,
  inboxPrefixFor,
  MAX_PARTITIONS,
  partitionOf,
  permissionsFor,
  Role,
  SERVICE_ROLES,
  Subjects,
  TENANT_ROLES,
  parseTenantId,
  type Role as RoleT,
} from '@capstan/schemas';

const t = parseTenantId('acme');
const inbox = inboxPrefixFor(`U${'A'.repeat(55)}`);

/** NATS subject matching: `*` one token, `>` the rest. */
function matches(pattern: string, subject: string): boolean {
  const p = pattern.split('.');
  const s = subject.split('.');
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '>') return s.length > i;
    if (p[i] !== '*' && p[i] !== s[i]) return false;
  }
  return p.length === s.length;
}

const mayPublish = (role: RoleT, subject: string) => {
  const perms = permissionsFor(role, t, inbox, role === Role.Worker ? { pools: ['default'] } : {});
  return perms.pub.some((p) => matches(p, subject));
};

describe('partitions', () => {
  it('partitionOf - the same run id always lands in the same partition, within range', () => {
    // Fixed values: every instance, and every release, must hash alike (a run's partition never moves).
    expect(partitionOf('', 16)).toBe(0x811c9dc5 % 16);
    expect(partitionOf('01JXAMPLE0000000000000000', 16)).toBe(partitionOf('01JXAMPLE0000000000000000', 16));
    for (let i = 0; i < 1000; i++) {
      const p = partitionOf(`run-${i}`, DEFAULT_PARTITIONS);
      expect(p).toBeGreaterThanOrEqual(0);
      expect(p).toBeLessThan(DEFAULT_PARTITIONS);
    }
  });

  it('partitionOf - spreads run ids over every partition', () => {
    const counts = new Array<number>(DEFAULT_PARTITIONS).fill(0);
    for (let i = 0; i < 16_000; i++) counts[partitionOf(`01J${i.toString(36).padStart(23, '0')}`, DEFAULT_PARTITIONS)]! += 1;
    expect(Math.min(...counts)).toBeGreaterThan(700);
    expect(Math.max(...counts)).toBeLessThan(1300);
  });

  it('lease subjects - every lease, member and the count live in the lease bucket; partitions out of range are refused', () => {
    const cfg = leasesStreamConfig(t);
    const subjects = [Subjects.partitionCount(t), Subjects.partitionLease(t, 0), Subjects.partitionLease(t, MAX_PARTITIONS - 1), Subjects.orchestratorMember(t, 'o1-abcd')];
    for (const s of subjects)
      expect(
        cfg.subjects?.some((p) => matches(p, s)),
        s,
      ).toBe(true);
    expect(cfg.max_msgs_per_subject).toBe(1);
    expect(() => Subjects.partitionLease(t, -1)).toThrow();
    expect(() => Subjects.partitionLease(t, MAX_PARTITIONS)).toThrow();
    expect(() => Subjects.partitionLease(t, 1.5)).toThrow();
    expect(() => Subjects.orchestratorMember(t, 'a.b')).toThrow();
  });

  it('permissions - only orchestrators write leases, presence and hand-overs; nobody but the admin writes the partition count', () => {
    const roles = [...TENANT_ROLES, ...SERVICE_ROLES];
    for (const role of roles) {
      const orch = role === Role.Orchestrator;
      expect(mayPublish(role, Subjects.partitionLease(t, 3)), `${role} lease`).toBe(orch);
      expect(mayPublish(role, Subjects.orchestratorMember(t, 'o1-abcd')), `${role} member`).toBe(orch);
      expect(mayPublish(role, Subjects.orchestratorInbox(t, 'o1-abcd')), `${role} hand-over`).toBe(orch);
      expect(mayPublish(role, Subjects.partitionCount(t)), `${role} count`).toBe(false);
    }
    const orch = permissionsFor(Role.Orchestrator, t, inbox);
    expect(orch.sub.some((p) => matches(p, Subjects.orchestratorInbox(t, 'o1-abcd')))).toBe(true);
  });
});
