/**
 * Tenant placement (replicas and server tags), the checks against a cluster's shape, the
 * streams that take it, and the leaf credential's permissions and configuration.
 */
import { describe, expect, it } from 'vitest';
import { leafNodeConfig } from '@capstan/cli';
import { checkPlacement, placed, tenantStreamConfigs } from '@capstan/kit';
import { ErrorCode, JsApi, parseTenantId, parseTenantPlacement, permissionsFor, Platform, Role, type CapstanError } from '@capstan/schemas';

const t = parseTenantId('acme');
const code = (f: () => unknown) => {
  try {
    f();
    return undefined;
  } catch (e) {
    return (e as CapstanError).code;
  }
};
const key = (c: string) => `U${c.repeat(55)}`;

describe('placement', () => {
  it('placement - replicas are 1, 3 or 5 and tags are server tags; anything else is placement_invalid', () => {
    expect(parseTenantPlacement({ replicas: 3, tags: ['AZ:1', 'az:1', 'tier:gold'] })).toEqual({ replicas: 3, tags: ['az:1', 'tier:gold'] });
    expect(parseTenantPlacement({})).toEqual({ replicas: 1, tags: [] });
    for (const bad of [
      { replicas: 2 },
      { replicas: 0 },
      { replicas: 7 },
      { replicas: '3' },
      { tags: ['no spaces'] },
      { tags: 'az:1' },
      { tags: Array.from({ length: 9 }, (_, i) => `t${i}`) },
    ]) {
      expect(code(() => parseTenantPlacement(bad))).toBe(ErrorCode.PlacementInvalid);
    }
  });

  it('placement - checked against the cluster: size, and enough servers carrying every tag', () => {
    const shape = {
      size: 3,
      servers: [
        { name: 'n1', tags: ['az:1', 'tier:gold'] },
        { name: 'n2', tags: ['az:2', 'tier:gold'] },
        { name: 'n3', tags: ['az:3'] },
      ],
    };
    expect(code(() => checkPlacement({ replicas: 3, tags: [] }, shape))).toBeUndefined();
    expect(code(() => checkPlacement({ replicas: 1, tags: ['tier:gold'] }, shape))).toBeUndefined();
    expect(code(() => checkPlacement({ replicas: 5, tags: [] }, shape))).toBe(ErrorCode.PlacementInvalid);
    expect(code(() => checkPlacement({ replicas: 3, tags: ['tier:gold'] }, shape))).toBe(ErrorCode.PlacementInvalid);
    expect(code(() => checkPlacement({ replicas: 3, tags: [] }, { size: 1, servers: [{ name: 's', tags: [] }] }))).toBe(ErrorCode.PlacementInvalid);
  });

  it('placement - every tenant stream takes the replica count and tags', () => {
    const streams = tenantStreamConfigs(t).map((c) => placed(c, { replicas: 3, tags: ['az:1'] }));
    expect(streams).toHaveLength(10);
    for (const s of streams) expect(s).toMatchObject({ num_replicas: 3, placement: { tags: ['az:1'] } });
    for (const s of tenantStreamConfigs(t).map((c) => placed(c))) expect(s.num_replicas).toBe(1);
  });
});

describe('leaf', () => {
  it("leaf - a leaf credential carries the workers' rights and only the named local users' replies", () => {
    const own = `_INBOX.${key('A')}`;
    const p = permissionsFor(Role.Leaf, t, own, { pools: ['default'], localUsers: [key('B')] });
    const worker = permissionsFor(Role.Worker, t, own, { pools: ['default'] });
    expect(p.pub).toEqual(worker.pub);
    expect(p.sub).toContain(`_INBOX.${key('B')}.>`);
    expect(p.sub).not.toContain(`${own}.>`);
    expect(p.sub.some((s) => s === '>' || s.startsWith('_INBOX.*') || s === '_INBOX.>')).toBe(false);
    expect(p.pub.some((s) => s.startsWith(`cap.${t}.runs`) || s.startsWith('$JS.API.STREAM.CREATE') || s.startsWith('$JS.API.CONSUMER.CREATE'))).toBe(false);
    // The domain form of each API subject, for a worker behind a leaf.
    expect(worker.pub).toContain(JsApi.inDomain(JsApi.info, Platform.jsDomain));
    expect(code(() => permissionsFor(Role.Leaf, t, own, { pools: ['default'] }))).toBe(ErrorCode.InvalidArgument);
  });

  it("leaf - the tenant server's configuration dials out, knows only the tenant's account, and holds no secret", () => {
    const conf = leafNodeConfig({
      tenant: t,
      operatorJwt: 'eyJ0.op.jwt',
      systemAccount: `A${'S'.repeat(55)}`,
      systemAccountJwt: 'eyJ0.sys.jwt',
      tenantAccount: `A${'T'.repeat(55)}`,
      tenantAccountJwt: 'eyJ0.acme.jwt',
      platformLeafUrls: ['tls://platform.example:7422'],
      credsPath: '/etc/capstan/leaf.creds',
    });
    expect(conf).toContain('resolver: MEMORY');
    expect(conf).toContain('"tls://platform.example:7422"');
    expect(conf).toContain(`account: A${'T'.repeat(55)}`);
    expect(conf).not.toMatch(/jetstream\s*\{/);
    expect(conf).not.toMatch(/SU[A-Z2-7]{50,}/);
    expect(conf).not.toMatch(/leafnodes\s*\{\s*listen/);
  });
});
