/**
 * Webhook deliveries as pure functions: Standard Webhooks signatures checked against the
 * reference signer (the `standardwebhooks` library) and the spec's own example, signing
 * secrets, the routes' field selection, route records, the rate limiter and ingress config.
 */
import { describe, expect, it } from 'vitest';
import { Webhook } from 'standardwebhooks';
import { signDelivery, verifyDelivery, webhookKey } from '@capstan/secrets-lease';
import { createRateLimiter, loadConfig, selectInput } from '@capstan/ingress';
import { CapstanError, parseWebhookRoute } from '@capstan/schemas';

const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const OTHER = `whsec_${Buffer.alloc(32, 7).toString('base64')}`;
const body = Buffer.from('{"test": 2432232314}');
const delivery = (signature: string, over: Partial<{ id: string; timestamp: string; body: Uint8Array }> = {}) => ({
  id: 'msg_p5jXN8AQM9LWM0D4loKWxJek',
  timestamp: '1614265330',
  body,
  signature,
  ...over,
});

describe('Standard Webhooks signatures', () => {
  const key = webhookKey('HOOK', SECRET);
  const signed = new Webhook(SECRET).sign('msg_p5jXN8AQM9LWM0D4loKWxJek', new Date(1614265330 * 1000), body);

  it("matches the specification's example and the reference signer", () => {
    expect(signed).toBe('v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=');
    expect(`v1,${signDelivery(key, 'msg_p5jXN8AQM9LWM0D4loKWxJek', '1614265330', body).toString('base64')}`).toBe(signed);
    expect(verifyDelivery([key], delivery(signed))).toBe(true);
  });

  it('refuses every forgery: a flipped body bit, another id or timestamp, another secret, a truncated or foreign signature', () => {
    const flipped = Buffer.from(body);
    flipped[3] = (flipped[3] as number) ^ 1;
    const forgeries = [
      delivery(signed, { body: flipped }),
      delivery(signed, { id: 'msg_other' }),
      delivery(signed, { timestamp: '1614265331' }),
      delivery(new Webhook(OTHER).sign('msg_p5jXN8AQM9LWM0D4loKWxJek', new Date(1614265330 * 1000), body)),
      delivery(signed.slice(0, -4)),
      delivery(signed.replace('v1,', 'v2,')),
      delivery('v1,'),
      delivery('v1,!!!!'),
      delivery(''),
    ];
    const through = forgeries.filter((d) => verifyDelivery([key], d)).length;
    process.stdout.write(`signature forgeries: ${forgeries.length} tried, ${through} through\n`);
    expect(through).toBe(0);
  });

  it('any signature of several, under any key of several (rotation on either side)', () => {
    const other = webhookKey('OLD', OTHER);
    const byOther = new Webhook(OTHER).sign('msg_p5jXN8AQM9LWM0D4loKWxJek', new Date(1614265330 * 1000), body);
    expect(verifyDelivery([key], delivery(`${byOther} ${signed}`))).toBe(true);
    expect(verifyDelivery([other, key], delivery(signed))).toBe(true);
    expect(verifyDelivery([other], delivery(signed))).toBe(false);
  });

  it('a secret that is not whsec_ base64 of 24 to 64 bytes is refused, naming it and never showing it', () => {
    for (const bad of ['hunter2-plain-text-password', 'whsec_c2hvcnQ=', `whsec_${Buffer.alloc(80).toString('base64')}`]) {
      let message = '';
      try {
        webhookKey('GITHUB_HOOK', bad);
      } catch (e) {
        message = CapstanError.is(e) ? e.message : '';
      }
      expect(message).toMatch(/^secret GITHUB_HOOK is not a webhook signing secret/);
      expect(message).not.toContain(bad);
    }
    expect(webhookKey('RAW', Buffer.alloc(32, 1).toString('base64')).length).toBe(32);
  });
});

describe('routes', () => {
  it('select input fields by JSON Pointer, every one required', () => {
    const doc = { data: { id: 7, 'a/b': 'slash', 'm~n': 'tilde', list: [1, { x: 'deep' }] }, action: 'push' };
    expect(selectInput(doc, { id: '/data/id', action: '/action', slash: '/data/a~1b', tilde: '/data/m~0n', deep: '/data/list/1/x', all: '' })).toEqual({
      id: 7,
      action: 'push',
      slash: 'slash',
      tilde: 'tilde',
      deep: 'deep',
      all: doc,
    });
    expect(() => selectInput(doc, { ref: '/ref', id: '/data/id', n: '/data/list/9' })).toThrow(/nothing at ref \(\/ref\), n \(\/data\/list\/9\)/);
    expect(selectInput({ a: 1 }, undefined)).toEqual({ a: 1 });
    expect(() => selectInput([1, 2], undefined)).toThrow(/must be a JSON object/);
  });

  it('route records are checked: secrets named, pointers well formed', () => {
    const ok = { route: 'github', workflow: 'ci.build', secrets: ['GITHUB_HOOK'], status: 'enabled', by: 'ann' };
    expect(parseWebhookRoute({ ...ok, fields: { repo: '/repository/full_name' } }).fields).toEqual({ repo: '/repository/full_name' });
    expect(parseWebhookRoute(ok).fields).toBeUndefined();
    expect(() => parseWebhookRoute({ ...ok, secrets: [] })).toThrow(/at least one signing secret/);
    expect(() => parseWebhookRoute({ ...ok, secrets: ['lower'] })).toThrow(/secrets/);
    expect(() => parseWebhookRoute({ ...ok, fields: { repo: 'repository' } })).toThrow(/JSON Pointer/);
    expect(() => parseWebhookRoute({ ...ok, route: 'Git Hub' })).toThrow(/route must match/);
  });

  it('the rate limiter holds a burst, then lets the rate through', () => {
    const l = createRateLimiter(10, 20);
    let ok = 0;
    for (let i = 0; i < 30; i++) if (l.take('t', 0).ok) ok++;
    expect(ok).toBe(20);
    expect(l.take('t', 0)).toEqual({ ok: false, retryAfterMs: 100 });
    expect(l.take('t', 100).ok).toBe(true);
    expect(l.take('other', 0).ok).toBe(true);
  });

  it('ingress config lists every problem at once', () => {
    expect(loadConfig({ NATS_URL: 'nats://127.0.0.1:4222', NATS_CREDS: '/x/ingress.creds' })).toMatchObject({
      port: 4336,
      maxBodyBytes: 262_144,
      toleranceSeconds: 300,
      ratePerSecond: 500,
      burst: 1000,
    });
    let message = '';
    try {
      loadConfig({ INGRESS_PORT: 'x', INGRESS_TOLERANCE_SECONDS: '3600', INGRESS_MAX_BODY_BYTES: '10', INGRESS_RATE: '50', INGRESS_BURST: '5' });
    } catch (e) {
      message = (e as Error).message;
    }
    for (const p of [
      'NATS_URL is required',
      'NATS_CREDS is required',
      'INGRESS_PORT',
      'INGRESS_TOLERANCE_SECONDS',
      'INGRESS_MAX_BODY_BYTES',
      'INGRESS_BURST (5) must be at least INGRESS_RATE (50)',
    ])
      expect(message).toContain(p);
  });
});
