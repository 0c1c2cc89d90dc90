import { describe, expect, it } from 'vitest';
import { ConfigError } from '@capstan/schemas';
import { parseFailpoints } from '@capstan/kit';
import { loadConfig } from '@capstan/projector';

const BASE = { NATS_URL: 'nats://127.0.0.1:4333', NATS_CREDS: 'projector.creds', DATABASE_URL: 'postgres://capstan:pw@127.0.0.1:5432/capstan' };

function problems(env: Record<string, string>): readonly string[] {
  try {
    loadConfig(env);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as ConfigError).problems;
  }
  throw new Error(`config accepted: ${JSON.stringify(env)}`);
}

describe('config - projector', () => {
  it('config - projector: defaults', () => {
    const c = loadConfig(BASE);
    expect([c.batch, c.discoveryMs, c.tenants, c.databaseUrl, c.nats.credsPaths]).toEqual([256, 2000, 'all', BASE.DATABASE_URL, ['projector.creds']]);
    expect(loadConfig({ ...BASE, PROJECTOR_BATCH: '64', CAPSTAN_TENANTS: 'a,b' })).toMatchObject({ batch: 64, tenants: ['a', 'b'] });
  });

  it('config - projector: a changed run stream is refused unless told to rebuild (dev)', () => {
    expect(loadConfig(BASE)).toMatchObject({ onStreamChange: 'refuse', syncCheckMs: 5000 });
    expect(loadConfig({ ...BASE, PROJECTOR_ON_STREAM_CHANGE: 'rebuild', PROJECTOR_SYNC_CHECK_MS: '1000' })).toMatchObject({ onStreamChange: 'rebuild', syncCheckMs: 1000 });
    expect(problems({ ...BASE, PROJECTOR_ON_STREAM_CHANGE: 'ignore', PROJECTOR_SYNC_CHECK_MS: '5' })).toEqual([
      expect.stringContaining('PROJECTOR_ON_STREAM_CHANGE must be refuse or rebuild'),
      expect.stringContaining('PROJECTOR_SYNC_CHECK_MS'),
    ]);
  });

  it('config - projector: DATABASE_URL is required and must be a postgres URL, never echoed', () => {
    expect(problems({ NATS_URL: BASE.NATS_URL, NATS_CREDS: BASE.NATS_CREDS })).toEqual([expect.stringContaining('DATABASE_URL is required')]);
    const p = problems({ ...BASE, DATABASE_URL: 'mysql://root:s3cret@db/x' });
    expect(p).toEqual([expect.stringContaining('DATABASE_URL must be a postgres://')]);
    expect(p.join(' ')).not.toContain('s3cret');
  });

  it('config - projector: every problem at once', () => {
    const p = problems({ PROJECTOR_BATCH: '0', PROJECTOR_DISCOVERY_MS: '5', LOG_LEVEL: 'loud', CAPSTAN_FAILPOINTS: 'x:explode:2' });
    expect(p).toHaveLength(7);
    for (const key of ['NATS_URL', 'NATS_CREDS', 'DATABASE_URL', 'PROJECTOR_BATCH', 'PROJECTOR_DISCOVERY_MS', 'LOG_LEVEL', 'CAPSTAN_FAILPOINTS']) {
      expect(
        p.some((x) => x.includes(key)),
        key,
      ).toBe(true);
    }
  });

  it('config - failpoints: name:kill:probability entries', () => {
    const bad: string[] = [];
    const fps = parseFailpoints(' projector.after_ack:kill:0.05, a_b-c:kill:1 ,x:kill:1.5,y:stop:0.1,z', bad);
    expect([...fps]).toEqual([
      ['projector.after_ack', { action: 'kill', probability: 0.05 }],
      ['a_b-c', { action: 'kill', probability: 1 }],
    ]);
    expect(bad).toHaveLength(3);
    expect(parseFailpoints(undefined).size).toBe(0);
  });
});
