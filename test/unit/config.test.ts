import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, ErrorCode } from '@capstan/schemas';
import { LOG_LEVELS, PROJECT_ROOT, type Env } from '@capstan/kit';
import { loadConfig as loadDatasync } from '@capstan/datasync';
import { loadConfig as loadOrchestrator } from '@capstan/orchestrator';
import { loadConfig as loadSandbox } from '@capstan/sandbox';
import { loadConfig as loadWorker } from '@capstan/worker';

const NATS = { NATS_URL: 'nats://127.0.0.1:4333', NATS_CREDS: 'service.creds' };
const CREDS = { NATS_CREDS: 'service.creds' };

function problems(load: (env: Env) => unknown, env: Env): readonly string[] {
  try {
    load(env);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    expect((e as ConfigError).code).toBe(ErrorCode.InvalidConfig);
    return (e as ConfigError).problems;
  }
  throw new Error(`config accepted: ${JSON.stringify(env)}`);
}

describe('config - shared keys', () => {
  const loaders = [
    ['orchestrator', loadOrchestrator],
    ['worker', loadWorker],
  ] as const;

  for (const [name, load] of loaders) {
    it(`config - ${name}: NATS_URL is required`, () => {
      for (const env of [{ ...CREDS }, { NATS_URL: '', ...CREDS }]) {
        const p = problems(load, env);
        expect(p).toHaveLength(1);
        expect(p[0]).toContain('NATS_URL is required');
      }
    });

    it(`config - ${name}: NATS_URL takes one or more host:port servers, with or without a scheme`, () => {
      for (const url of ['nats://127.0.0.1:4222', 'localhost:4222', 'nats://a:1,nats://b:2', 'tls://h.example:4443']) {
        expect((load({ NATS_URL: url, ...CREDS }) as { natsUrl: string }).natsUrl).toBe(url);
      }
      for (const [url, bad] of [
        ['nats://host', 1],
        ['nats://a:1,bad', 1],
        ['nats://:4222', 1],
        ['a,b', 2],
      ] as const) {
        const p = problems(load, { NATS_URL: url, ...CREDS });
        expect(p, url).toHaveLength(bad);
        for (const line of p) expect(line).toContain('NATS_URL has an invalid server address');
      }
    });

    it(`config - ${name}: LOG_LEVEL is one of the pino levels`, () => {
      for (const level of LOG_LEVELS) expect((load({ ...NATS, LOG_LEVEL: level }) as { logLevel: string }).logLevel).toBe(level);
      expect((load({ ...NATS, LOG_LEVEL: '' }) as { logLevel: string }).logLevel).toBe('info');
      for (const bad of ['loud', 'INFO', 'verbose']) expect(problems(load, { ...NATS, LOG_LEVEL: bad })[0]).toContain('LOG_LEVEL');
    });

    it(`config - ${name}: CAPSTAN_TENANTS is all, or a list of valid tenant ids`, () => {
      const tenants = (env: Env) => (load({ ...NATS, ...env }) as { tenants: unknown }).tenants;
      expect(tenants({})).toBe('all');
      expect(tenants({ CAPSTAN_TENANTS: '' })).toBe('all');
      expect(tenants({ CAPSTAN_TENANTS: ' * ' })).toBe('all');
      expect(tenants({ CAPSTAN_TENANTS: 'acme, b-2 ,,' })).toEqual(['acme', 'b-2']);
      const p = problems(load, { ...NATS, CAPSTAN_TENANTS: 'acme,Bad,a.b,ok' });
      expect(p).toHaveLength(2);
      expect(p.join('\n')).toContain('"Bad"');
      expect(p.join('\n')).toContain('"a.b"');
    });

    it(`config - ${name}: the config is frozen`, () => {
      const c = load(NATS);
      expect(Object.isFrozen(c)).toBe(true);
    });
  }
});

describe('config - orchestrator', () => {
  it('config - orchestrator: defaults', () => {
    expect(loadOrchestrator(NATS)).toEqual({
      natsUrl: NATS.NATS_URL,
      nats: { credsPaths: ['service.creds'] },
      logLevel: 'info',
      tenants: 'all',
      workflowsModule: '',
      cacheSize: 10_000,
      maxBatch: 256,
      maxTicks: 2,
      discoveryMs: 2000,
      name: `orchestrator-${process.pid}`,
      policy: 'on',
      approvalTtlMs: 86_400_000,
      policyTimeoutMs: 2000,
      leaseTtlMs: 3000,
      leaseRenewMs: 500,
      effectBatches: 'pipelined',
    });
  });

  it('config - orchestrator: every key can be set', () => {
    const c = loadOrchestrator({
      ...NATS,
      LOG_LEVEL: 'debug',
      CAPSTAN_TENANTS: 'acme,beta',
      CAPSTAN_WORKFLOWS: '/srv/workflows.js',
      ORCH_CACHE_SIZE: '0',
      ORCH_MAX_BATCH: '1000',
      ORCH_MAX_TICKS: '64',
      ORCH_DISCOVERY_MS: '3600000',
      NATS_TLS_CA: '/etc/ca.pem',
      ORCH_NAME: 'orch-a',
      ORCH_POLICY: 'off',
      ORCH_APPROVAL_TTL_MS: '60000',
      ORCH_POLICY_TIMEOUT_MS: '500',
      ORCH_LEASE_TTL_MS: '9000',
      ORCH_LEASE_RENEW_MS: '1000',
      ORCH_EFFECT_BATCHES: 'atomic',
    });
    expect(c).toEqual({
      natsUrl: NATS.NATS_URL,
      nats: { credsPaths: ['service.creds'], tls: { caFile: '/etc/ca.pem' } },
      logLevel: 'debug',
      tenants: ['acme', 'beta'],
      workflowsModule: '/srv/workflows.js',
      cacheSize: 0,
      maxBatch: 1000,
      maxTicks: 64,
      discoveryMs: 3_600_000,
      name: 'orch-a',
      policy: 'off',
      approvalTtlMs: 60_000,
      policyTimeoutMs: 500,
      leaseTtlMs: 9000,
      leaseRenewMs: 1000,
      effectBatches: 'atomic',
    });
  });

  const RANGES: [string, number, number][] = [
    ['ORCH_CACHE_SIZE', 0, 10_000_000],
    ['ORCH_MAX_BATCH', 1, 1000],
    ['ORCH_MAX_TICKS', 1, 64],
    ['ORCH_DISCOVERY_MS', 100, 3_600_000],
  ];
  for (const [key, min, max] of RANGES) {
    it(`config - orchestrator: ${key} accepts ${min}..${max} and nothing else`, () => {
      expect(() => loadOrchestrator({ ...NATS, [key]: String(min) })).not.toThrow();
      expect(() => loadOrchestrator({ ...NATS, [key]: String(max) })).not.toThrow();
      for (const bad of [String(min - 1), String(max + 1), 'abc', '1.5', 'NaN', 'Infinity', '1e400']) {
        const p = problems(loadOrchestrator, { ...NATS, [key]: bad });
        expect(p, bad).toHaveLength(1);
        expect(p[0]).toContain(key);
        expect(p[0]).toContain(JSON.stringify(bad));
      }
    });
  }

  it('config - orchestrator: every invalid key is reported at once', () => {
    const p = problems(loadOrchestrator, {
      LOG_LEVEL: 'loud',
      CAPSTAN_TENANTS: 'Bad,x.y,ok',
      ORCH_CACHE_SIZE: '-1',
      ORCH_MAX_BATCH: '0',
      ORCH_MAX_TICKS: '65',
      ORCH_DISCOVERY_MS: '1.5',
      NATS_TLS_CERT: '/etc/client.pem',
    });
    // NATS_URL, NATS_CREDS, the half TLS pair, LOG_LEVEL, two tenants, and four numbers
    expect(p).toHaveLength(10);
    const all = p.join('\n');
    for (const key of ['NATS_URL', 'NATS_CREDS', 'NATS_TLS_CERT', 'LOG_LEVEL', 'CAPSTAN_TENANTS', 'ORCH_CACHE_SIZE', 'ORCH_MAX_BATCH', 'ORCH_MAX_TICKS', 'ORCH_DISCOVERY_MS']) {
      expect(all).toContain(key);
    }
    // the message lists them too, one per line
    try {
      loadOrchestrator({});
    } catch (e) {
      expect((e as Error).message).toContain('invalid configuration');
    }
  });
});

describe('config - worker', () => {
  it('config - worker: defaults', () => {
    expect(loadWorker(NATS)).toEqual({
      natsUrl: NATS.NATS_URL,
      nats: { credsPaths: ['service.creds'] },
      logLevel: 'info',
      tenants: 'all',
      pools: [],
      handlersModule: '',
      concurrency: 64,
      resultBatches: 'pipelined',
      startedAfterMs: 250,
      discoveryMs: 2000,
      sandboxStallMs: 5000,
      datasyncStallMs: 10_000,
      leases: true,
      approvalTtlMs: 900_000,
      id: '',
      admission: 'required',
      auditDatabaseUrl: '',
    });
  });

  it('config - worker: WORKER_STARTED_AFTER_MS defaults to 250 when unset or empty; 0 reports every step started at once', () => {
    const startedAfter = (env: Record<string, string>) => loadWorker({ ...NATS, ...env }).startedAfterMs;
    expect(startedAfter({})).toBe(250);
    expect(startedAfter({ WORKER_STARTED_AFTER_MS: '' })).toBe(250);
    expect(startedAfter({ WORKER_STARTED_AFTER_MS: '0' })).toBe(0);
    expect(startedAfter({ WORKER_STARTED_AFTER_MS: '1' })).toBe(1);
    expect(startedAfter({ WORKER_STARTED_AFTER_MS: '5000' })).toBe(5000);
    expect(startedAfter({ WORKER_STARTED_AFTER_MS: '3600000' })).toBe(3_600_000);
    const p = problems(loadWorker, { ...NATS, WORKER_STARTED_AFTER_MS: '-1' });
    expect(p).toEqual(['WORKER_STARTED_AFTER_MS must be an integer between 0 and 3600000 (got "-1")']);
  });

  it('config - worker: every key can be set', () => {
    expect(
      loadWorker({
        ...NATS,
        LOG_LEVEL: 'warn',
        CAPSTAN_TENANTS: 'acme',
        WORKER_POOLS: ' gpu , cpu_2 ,',
        CAPSTAN_HANDLERS: './handlers.js',
        WORKER_CONCURRENCY: '1',
        WORKER_RESULT_BATCHES: 'atomic',
        NATS_CREDS: 'acme.creds,beta.creds',
        WORKER_STARTED_AFTER_MS: '0',
        WORKER_DISCOVERY_MS: '100',
        WORKER_ID: 'w-7',
        WORKER_ADMISSION: 'auto',
        WORKER_SANDBOX_STALL_MS: '800',
        WORKER_DATASYNC_STALL_MS: '900',
        WORKER_LEASES: 'off',
        WORKER_APPROVAL_TTL_MS: '5000',
        AUDIT_DATABASE_URL: 'postgres://worker@db:5432/capstan',
      }),
    ).toEqual({
      natsUrl: NATS.NATS_URL,
      nats: { credsPaths: ['acme.creds', 'beta.creds'] },
      logLevel: 'warn',
      tenants: ['acme'],
      pools: ['gpu', 'cpu_2'],
      handlersModule: './handlers.js',
      concurrency: 1,
      resultBatches: 'atomic',
      startedAfterMs: 0,
      discoveryMs: 100,
      sandboxStallMs: 800,
      datasyncStallMs: 900,
      leases: false,
      approvalTtlMs: 5000,
      id: 'w-7',
      admission: 'auto',
      auditDatabaseUrl: 'postgres://worker@db:5432/capstan',
    });
  });

  const RANGES: [string, number, number][] = [
    ['WORKER_CONCURRENCY', 1, 10_000],
    ['WORKER_STARTED_AFTER_MS', 0, 3_600_000],
    ['WORKER_DISCOVERY_MS', 100, 3_600_000],
  ];
  for (const [key, min, max] of RANGES) {
    it(`config - worker: ${key} accepts ${min}..${max} and nothing else`, () => {
      expect(() => loadWorker({ ...NATS, [key]: String(min) })).not.toThrow();
      expect(() => loadWorker({ ...NATS, [key]: String(max) })).not.toThrow();
      for (const bad of [String(min - 1), String(max + 1), 'x', '2.5', 'NaN', 'Infinity', '1e400']) {
        const p = problems(loadWorker, { ...NATS, [key]: bad });
        expect(p, bad).toHaveLength(1);
        expect(p[0]).toContain(key);
        expect(p[0]).toContain(JSON.stringify(bad));
      }
    });
  }

  it('config - worker: bad pool names are each reported; none means every pool of its credential', () => {
    const p = problems(loadWorker, { ...NATS, WORKER_POOLS: 'ok,Bad Pool,a.b,*' });
    expect(p).toHaveLength(3);
    for (const line of p) expect(line).toContain('WORKER_POOLS');
    expect(loadWorker({ ...NATS, WORKER_POOLS: ' , ,' }).pools).toEqual([]);
  });

  it('config - worker: every invalid key is reported at once', () => {
    const p = problems(loadWorker, {
      LOG_LEVEL: 'chatty',
      CAPSTAN_TENANTS: '-bad',
      WORKER_POOLS: 'UPPER',
      WORKER_CONCURRENCY: '0',
      WORKER_STARTED_AFTER_MS: '-5',
      WORKER_DISCOVERY_MS: 'often',
    });
    // NATS_URL, NATS_CREDS, LOG_LEVEL, CAPSTAN_TENANTS, the pool, and three numbers
    expect(p).toHaveLength(8);
    const all = p.join('\n');
    for (const key of ['NATS_URL', 'LOG_LEVEL', 'CAPSTAN_TENANTS', 'WORKER_POOLS', 'NATS_CREDS', 'WORKER_CONCURRENCY', 'WORKER_STARTED_AFTER_MS', 'WORKER_DISCOVERY_MS']) {
      expect(all).toContain(key);
    }
  });
});

describe('config - a service runs from its own install', () => {
  it('config - state folders default to .capstan/ under the working directory, not the checkout', () => {
    const sandbox = loadSandbox({ ...NATS });
    expect(sandbox.imageDir).toBe(resolve(process.cwd(), '.capstan', 'sandbox'));
    expect(sandbox.artifactsDir).toBe(resolve(process.cwd(), '.capstan', 'artifacts'));
    const datasync = loadDatasync({ ...NATS, DATABASE_URL: 'postgres://capstan@127.0.0.1:5432/capstan' });
    expect(datasync.filesRoot).toBe(resolve(process.cwd(), '.capstan', 'datasync', 'files'));
  });

  it('config - a state folder that is set is used, resolved once', () => {
    const sandbox = loadSandbox({ ...NATS, SANDBOX_IMAGE_DIR: 'img', SANDBOX_ARTIFACTS_DIR: '/srv/artifacts' });
    expect(sandbox.imageDir).toBe(resolve('img'));
    expect(sandbox.artifactsDir).toBe('/srv/artifacts');
  });

  it('config - packages ship the files they load at run time', () => {
    // Each is found relative to its own module, so it must be in the installed package too:
    // the sandbox's apt fetcher (image.ts: ../apt/fetch-deb.mjs), the schemas' migrations
    // (migrations.ts: ../migrations/).
    for (const [dir, asset, entry] of [
      [join('services', 'sandbox'), 'apt', join('apt', 'fetch-deb.mjs')],
      ['schemas', 'migrations', join('migrations', 'meta', '_journal.json')],
    ] as const) {
      const pkg = join(PROJECT_ROOT, dir);
      const files = (JSON.parse(readFileSync(join(pkg, 'package.json'), 'utf8')) as { files?: string[] }).files ?? [];
      expect(files, dir).toEqual(expect.arrayContaining(['dist', asset]));
      expect(existsSync(join(pkg, entry)), join(dir, entry)).toBe(true);
    }
  });
});
