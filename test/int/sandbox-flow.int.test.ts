/**
 * Sandboxed steps end to end: `demo.sandboxed` (mode 0 → mode 1 → mode 2 with a leased
 * credential) through the orchestrator, a worker, the sandbox service and the projector,
 * and a mode-3 CLI agent calling a local OpenAI-compatible endpoint through its egress grant.
 * The credential's value is a canary: it must reach the step (its digest proves it) and
 * nothing else — no stream, no projection table, no log line, no result.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type Docker from 'dockerode';
import { sql } from 'drizzle-orm';
import { openDatabase, queryRows, type Database } from '@capstan/kit';
import { createProjector, loadConfig as projectorConfig, type ProjectorApp } from '@capstan/projector';
import { makeRunId, Streams, type TenantId, Role } from '@capstan/schemas';
import { connect, eventsOf, eventually, provision, silent, startServices, type Harness, type InProcessServices, serviceEnv } from '../harness/fixtures.js';
import { dockerOrSkip } from '../harness/docker.js';
import { scratchDatabase } from '../harness/postgres.js';
import { startSandboxes, type TestSandboxes } from '../harness/sandbox.js';

const url = inject('natsUrl');
const docker = await dockerOrSkip();
const sha = (s: string) => createHash('sha256').update(s).digest('hex');

describe.skipIf(!docker)('sandboxed runs end to end', () => {
  let h: Harness;
  let t: TenantId;
  let sb: TestSandboxes;
  let services: InProcessServices;
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  let d: Database;
  let projector: ProjectorApp;
  const canary = `demo-canary-${Math.random().toString(36).slice(2)}`;

  beforeAll(async () => {
    h = await connect(url);
    t = await provision(h, 'sbxflow');
    // The mode-3 agent's endpoint is on this host's loopback: the admin allow-list names it,
    // and egress is audited (a scratch database), as it must be before any connection opens.
    sb = await startSandboxes(h, url, docker as Docker, [t], { SANDBOX_EGRESS_ALLOW: '127.0.0.1/32' }, { audit: true });
    sb.setSecrets({ [t]: { DEMO_TOKEN: canary, OPENAI_API_KEY: `sk-${canary}` } });
    services = await startServices(url, [t]);
    scratch = await scratchDatabase('sbxflow');
    d = await openDatabase({ url: scratch.url, log: silent });
    projector = await createProjector(
      projectorConfig({ ...(await serviceEnv(url, Role.Projector)), DATABASE_URL: scratch.url, CAPSTAN_TENANTS: t, PROJECTOR_DISCOVERY_MS: '200' }),
      silent,
      { database: d },
    );
    await projector.start();
  }, 300_000);

  afterAll(async () => {
    await projector?.stop();
    await services?.stop();
    await sb?.stop();
    await h?.close();
    await d?.close();
    await scratch?.drop();
  });

  it('demo.sandboxed completes: mode 0, 1 and 2 steps, metadata on the record, the credential nowhere else', async () => {
    const runId = await h.client.submit(t, 'demo.sandboxed', { input: { text: 'the quick brown fox jumps' } });
    const end = await h.client.waitForEnd(t, runId, 120_000);
    const events = await eventsOf(h, t, runId);
    if (end.type !== 'run.completed') process.stdout.write(`${events.map((e) => `${e.seq} ${e.type} ${JSON.stringify(e.data)}`).join('\n')}\n`);
    expect(end.type).toBe('run.completed');

    const scheduled = events.filter((e) => e.type === 'step.scheduled');
    expect(scheduled.map((e) => [e.data.step, e.data.mode])).toEqual([
      ['prepare', 0],
      ['analyse', 1],
      ['publish', 2],
    ]);
    // Key names are on the record; values never are.
    expect(scheduled[2]?.type === 'step.scheduled' && scheduled[2].data.sandbox?.secrets).toEqual(['DEMO_TOKEN']);
    const completed = events.flatMap((e) => (e.type === 'step.completed' ? [e.data] : []));
    const analyse = completed.find((c) => c.step === 'analyse')?.result as { sandbox: string; artifacts: { path: string; sha256: string }[]; destination: string };
    const publish = completed.find((c) => c.step === 'publish')?.result as { sandbox: string; artifacts: { path: string }[]; destination: string };
    expect(analyse.sandbox).toBe(`cap-${runId}-analyse-1`);
    expect(analyse.artifacts.map((a) => a.path)).toEqual(['out/report.json']);
    const report = JSON.parse(readFileSync(join(fileURLToPath(analyse.destination), 'out/report.json'), 'utf8')) as { words: number };
    expect(report.words).toBe(5);
    // The mode-2 step had the credential: its digest is in its artifact.
    const digest = readFileSync(join(fileURLToPath(publish.destination), 'out/token-digest.txt'), 'utf8').trim();
    expect(digest).toBe(sha(canary).slice(0, 12));

    // Projections: the steps show their mode and sandbox; no table holds the canary.
    await eventually('projected', async () => {
      const rows = await queryRows<{ status: string }>(d, sql`select status from runs where tenant = ${t} and run_id = ${runId}`);
      return rows[0]?.status === 'completed' ? rows : undefined;
    });
    const tables = await queryRows<{ table_name: string }>(d, sql`select table_name from information_schema.tables where table_schema = 'public'`);
    let dump = '';
    for (const { table_name } of tables) {
      const rows = await queryRows<Record<string, unknown>>(d, sql.raw(`select * from "${table_name}"`));
      dump += JSON.stringify(rows);
    }
    let streams = '';
    for (const kind of ['runs', 'commands', 'work'] as const) {
      const name = Streams[kind](t);
      const jsm = await h.jsm(t);
      const info = await jsm.streams.info(name);
      for (let seq = info.state.first_seq; seq <= info.state.last_seq && seq > 0; seq++) {
        const m = await jsm.streams.getMessage(name, { seq }).catch(() => undefined);
        if (m) streams += Buffer.from(m.data).toString('latin1');
      }
    }
    const forms = [canary, Buffer.from(canary).toString('base64'), Buffer.from(canary).toString('hex'), encodeURIComponent(canary)];
    const found = forms.flatMap((f) =>
      [
        ['postgres', dump],
        ['streams', streams],
        ['service log', sb.logs()],
        ['events', JSON.stringify(events)],
      ]
        .filter(([, hay]) => (hay as string).includes(f))
        .map(([w]) => w),
    );
    process.stdout.write(`canary search: postgres ${dump.length} chars over ${tables.length} tables, streams ${streams.length} bytes: found in ${JSON.stringify(found)}\n`);
    expect(found).toEqual([]);
    expect(dump).toContain(`cap-${runId}-publish-1`);
  });

  it('mode 3: a CLI agent calls a local OpenAI-compatible endpoint through its egress grant and leaves its work as artifacts', async () => {
    let auth = '';
    let turns = 0;
    const llm = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        auth = req.headers.authorization ?? '';
        turns++;
        const asked = JSON.parse(body) as { messages: { role: string }[] };
        const message = asked.messages.some((m) => m.role === 'tool')
          ? { role: 'assistant', content: 'Wrote out/hello.txt.' }
          : {
              role: 'assistant',
              content: null,
              tool_calls: [{ id: 'c1', type: 'function', function: { name: 'write_file', arguments: JSON.stringify({ path: 'hello.txt', content: 'hello from the agent\n' }) } }],
            };
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ id: 'x', object: 'chat.completion', choices: [{ index: 0, message, finish_reason: 'stop' }] }));
      });
    });
    await new Promise<void>((r) => llm.listen(0, '127.0.0.1', r));
    const port = (llm.address() as AddressInfo).port;
    try {
      const runId = makeRunId(Date.now(), crypto.getRandomValues(new Uint8Array(10)));
      const out = await sb.exec(
        t,
        3,
        {
          agent: 'mini',
          task: 'Write a greeting to out/hello.txt.',
          env: [{ name: 'OPENAI_BASE_URL', value: `http://127.0.0.1:${port}/v1` }],
          secrets: ['OPENAI_API_KEY'],
          egress: [`127.0.0.1:${port}`],
        },
        { runId },
      );
      if (out.error)
        process.stdout.write(`agent: ${JSON.stringify(out)}\n${readFileSync(join(fileURLToPath(out.result?.destination ?? 'file:///nonexistent'), 'stderr.log'), 'utf8')}\n`);
      expect(out.error).toBeUndefined();
      expect(turns).toBe(2);
      expect(auth).toBe(`Bearer sk-${canary}`);
      expect(out.result?.artifacts.map((a) => a.path)).toEqual(['out/answer.md', 'out/hello.txt']);
      const dir = fileURLToPath(out.result?.destination ?? '');
      expect(readFileSync(join(dir, 'out/hello.txt'), 'utf8')).toBe('hello from the agent\n');
      // One audit row per connection to the model, each written before it opened.
      expect((await sb.auditRows(t, runId)).map((r) => [r.kind, r.detail['target']])).toEqual([
        ['egress.connect', `127.0.0.1:${port}`],
        ['egress.connect', `127.0.0.1:${port}`],
      ]);
      expect(sb.logs()).not.toContain(canary);
    } finally {
      llm.close();
    }
  });

  it('a mode-2 step whose secret does not exist fails with secret_not_found, naming the key only', async () => {
    const out = await sb.exec(t, 2, { secrets: ['NOPE'], command: ['true'] });
    expect(out.error?.code).toBe('secret_not_found');
    expect(out.error?.message).toContain('NOPE');
    expect(out.error?.retryable).toBe(false);
  });
});
