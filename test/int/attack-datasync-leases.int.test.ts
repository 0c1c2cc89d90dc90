/**
 * The datasync service's leases, played as a stolen or buggy datasync credential would use
 * them (auth on, the real secrets-lease, orchestrator, worker and datasync services): it asks
 * for another connection's keys, for a run that does not exist, has ended or is no pipeline,
 * for a step never scheduled, and for previews with no, a forged, an altered, a stale or a
 * replayed person's request. Every lease issued is counted: 0. The controls go through: a
 * pipeline run and an operator's signed preview, and the same credential's lease for the
 * step its run scheduled, so a zero is a refusal and not a broken probe.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { issueLease, newRunId, parseCredentials, previewQuery, previewRunId, putEntity, putSecret, queryRows, signerOf, type Signer } from '@capstan/kit';
import { createDatasync, loadConfig as datasyncConfig, type DatasyncService } from '@capstan/datasync';
import {
  CatalogKind,
  DatasyncVerb,
  encode,
  ErrorCode,
  PIPELINE_WORKFLOW,
  Role,
  Subjects,
  type LeaseRequest,
  type PreviewRequest,
  type RunId,
  type TenantId,
} from '@capstan/schemas';
import { accessAs, codeOf, eventsOf, eventually, serviceEnv, testAuthStore, TEST_DEFAULTS, type Harness } from '../harness/fixtures.js';
import { capturingLogger, datasyncFixture, defineCatalog, type DatasyncFixture } from '../harness/datasync.js';

const url = inject('natsUrl');

let f: DatasyncFixture;
let h: Harness;
let t: TenantId;
let datasync: DatasyncService | undefined;
const signers: Record<'datasync' | 'operator' | 'client', Signer> = {} as never;
const logs: string[] = [];

async function startDatasync(): Promise<void> {
  datasync = await createDatasync(
    datasyncConfig({ ...(await serviceEnv(url, Role.Datasync)), CAPSTAN_TENANTS: t, DATABASE_URL: f.stateUrl, DATASYNC_FILES_ROOT: f.filesRoot, ...TEST_DEFAULTS }),
    capturingLogger('datasync', logs),
  );
  await datasync.start();
}

/** A preview request as a person's CLI sends it: its body, signed over the preview subject. */
function signedPreview(signer: Signer, req: PreviewRequest, subject = Subjects.datasync(t, DatasyncVerb.Preview)): NonNullable<LeaseRequest['preview']> & { at: number } {
  const request = encode(req);
  return { request, signer: signer.jwt, signature: signer.sign(subject, request), at: req.at ?? 0 };
}

beforeAll(async () => {
  // The stack without its datasync service: this file starts (and stops) its own.
  f = await datasyncFixture(url, 'dsl', { items: 200, datasync: false });
  ({ h, t } = f);
  await startDatasync();
  const admin = (await h.tenant(t)).signer as Signer;
  await defineCatalog(await h.nc(t), t, f.src, { password: 'unused-by-trust-auth', destinations: { lake: { type: 'files', path: 'lake', format: 'jsonl' } }, signer: admin });
  // Another connection of the tenant, with its own key: not the pipeline's.
  await putSecret(await h.nc(t), t, 'OTHER_PG_PASSWORD', 'other-value', { by: 'test', signer: admin });
  const u = new URL(f.src.url);
  await putEntity(await h.nc(t), t, {
    kind: CatalogKind.Connection,
    id: 'other',
    spec: {
      type: 'postgres',
      host: u.hostname,
      port: Number(u.port || 5432),
      database: f.src.database,
      tls: { mode: 'disable' },
      auth: { type: 'username_password', username: 'postgres', passwordKey: 'OTHER_PG_PASSWORD' },
    },
    by: 'test',
  });
  signers.datasync = (await (await accessAs(url, Role.Datasync)).tenant(t)).signer as Signer;
  const store = await testAuthStore();
  const operator = await parseCredentials(await store.mintUser(t, Role.Operator, 'olive'), 'olive');
  signers.operator = signerOf(operator.jwt, operator.seed);
  const client = await parseCredentials(await store.mintUser(t, Role.Client, 'mallory'), 'mallory');
  signers.client = signerOf(client.jwt, client.seed);
}, 180_000);

afterAll(async () => {
  await datasync?.stop();
  await f?.close();
}, 60_000);

const deniedNotWarranted = async () =>
  (
    await queryRows<{ n: number }>(
      f.stack.db,
      sql`select count(*)::int as n from audit_log where tenant = ${t} and kind = 'lease.denied' and detail->>'code' = ${ErrorCode.LeaseNotWarranted}`,
    )
  )[0]?.n ?? 0;

describe('datasync leases are warranted by the run’s record or the person’s signed preview', () => {
  it('a datasync credential gets nothing a pipeline step or a signed preview does not warrant: 0 leases; the real pipeline, its step’s lease and a signed preview go through', async () => {
    // A live pipeline run whose Retrieve is scheduled and waits: the datasync service is
    // stopped, so the worker's attempt finds no responder and is retried with backoff.
    await datasync?.stop();
    datasync = undefined;
    const live = await h.client.submit(t, PIPELINE_WORKFLOW, { input: { connection: 'shop', model: 'shop-model', destination: 'lake' } });
    await eventually('Retrieve scheduled', async () => ((await eventsOf(h, t, live)).some((e) => e.type === 'step.scheduled' && e.data.step === 'retrieve') ? true : undefined));
    // A run of another workflow, scheduled and alive.
    const other = await h.client.submit(t, 'test.slow', { input: {} });

    const nc = await h.nc(t);
    const ask = (r: LeaseRequest) => issueLease(nc, t, r, { signer: signers.datasync });
    const at = Date.now();
    const fresh = signedPreview(signers.operator, { connection: 'shop', sql: 'select 1', by: 'olive', at });
    const stale = signedPreview(signers.operator, { connection: 'shop', sql: 'select 1', by: 'olive', at: at - 10 * 60_000 });
    const undated = signedPreview(signers.operator, { connection: 'shop', sql: 'select 1', by: 'olive' });
    const byDatasync = signedPreview(signers.datasync, { connection: 'shop', sql: 'select 1', by: 'olive', at });
    const byClient = signedPreview(signers.client, { connection: 'shop', sql: 'select 1', by: 'olive', at });
    const otherSubject = signedPreview(signers.operator, { connection: 'shop', sql: 'select 1', by: 'olive', at }, Subjects.datasync(t, DatasyncVerb.Put));
    const forOther = signedPreview(signers.operator, { connection: 'other', sql: 'select 1', by: 'olive', at });
    const pv = (w: ReturnType<typeof signedPreview>, keys = ['SHOP_PG_PASSWORD'], runId: RunId = previewRunId(w.at, w.signature)): LeaseRequest => ({
      runId,
      step: 'preview',
      attempt: 1,
      keys,
      preview: { request: w.request, signer: w.signer, signature: w.signature },
    });
    const altered = { ...pv(fresh), preview: { request: encode({ connection: 'other', sql: 'select 1', by: 'olive', at }), signer: fresh.signer, signature: fresh.signature } };

    const attacks: [string, LeaseRequest][] = [
      ['another connection’s key, for the live run’s Retrieve', { runId: live, step: 'retrieve', attempt: 1, keys: ['OTHER_PG_PASSWORD'] }],
      ['its own and another connection’s key', { runId: live, step: 'retrieve', attempt: 1, keys: ['SHOP_PG_PASSWORD', 'OTHER_PG_PASSWORD'] }],
      ['a step never scheduled (Load)', { runId: live, step: 'load', attempt: 1, keys: ['SHOP_PG_PASSWORD'] }],
      ['an attempt never scheduled', { runId: live, step: 'retrieve', attempt: 7, keys: ['SHOP_PG_PASSWORD'] }],
      ['a step that opens no connection (Refresh)', { runId: live, step: 'refresh', attempt: 1, keys: ['SHOP_PG_PASSWORD'] }],
      ['a run that does not exist', { runId: newRunId(), step: 'retrieve', attempt: 1, keys: ['SHOP_PG_PASSWORD'] }],
      ['a run of another workflow', { runId: other, step: 'retrieve', attempt: 1, keys: ['SHOP_PG_PASSWORD'] }],
      ['a preview with no request', { runId: newRunId(), step: 'preview', attempt: 1, keys: ['SHOP_PG_PASSWORD'] }],
      ['a preview request signed by the datasync service itself', pv(byDatasync)],
      ['a preview request signed by a client', pv(byClient)],
      ['an operator’s signature over another subject', pv(otherSubject)],
      ['an operator’s request altered (another connection)', altered],
      ['an operator’s request for one connection, another’s key', pv(fresh, ['OTHER_PG_PASSWORD'])],
      ['an operator’s request for the other connection, this one’s key', pv(forOther, ['SHOP_PG_PASSWORD'])],
      ['an operator’s request under another scope', pv(fresh, ['SHOP_PG_PASSWORD'], newRunId())],
      ['a stale operator’s request (10 min old)', pv(stale)],
      ['an undated operator’s request', pv(undated)],
    ];
    const deniedBefore = await deniedNotWarranted();
    const codes: Record<string, string> = {};
    let issued = 0;
    for (const [name, req] of attacks) {
      codes[name] = await codeOf(ask(req));
      if (codes[name] === 'ok') issued++;
    }
    // Controls with the same credential: the live run's scheduled Retrieve, and an
    // operator's fresh signed preview request, once; its replay gets nothing.
    const stepControl = await codeOf(ask({ runId: live, step: 'retrieve', attempt: 1, keys: ['SHOP_PG_PASSWORD'] }));
    const previewControl = await codeOf(ask(pv(fresh)));
    const replay = await codeOf(ask(pv(fresh)));
    if (replay === 'ok') issued++;

    // The datasync service again: the live run's next attempt loads, as does a new run; an
    // operator's preview answers.
    await startDatasync();
    const liveEnd = await h.client.waitForEnd(t, live, 120_000);
    const run = await h.client.submit(t, PIPELINE_WORKFLOW, { input: { connection: 'shop', model: 'shop-model', destination: 'lake' } });
    const runEnd = await h.client.waitForEnd(t, run, 120_000);
    const preview = await previewQuery(await h.nc(t), t, { connection: 'shop', sql: 'select count(*) as n from orders', by: 'olive' }, { signer: signers.operator });
    // The ended run: its Retrieve was scheduled, but nothing more is leased for it.
    const ended = await codeOf(ask({ runId: run, step: 'retrieve', attempt: 1, keys: ['SHOP_PG_PASSWORD'] }));
    if (ended === 'ok') issued++;
    const denied = (await deniedNotWarranted()) - deniedBefore;
    process.stdout.write(
      `datasync lease attacks: ${attacks.length + 2} played, leases issued ${issued}, lease_not_warranted denials recorded ${denied}; ` +
        `controls: step ${stepControl}, preview ${previewControl}, replay ${replay}, ended run ${ended}, live run ${liveEnd.type}, new run ${runEnd.type}, preview rows ${preview.rows.length}\n`,
    );
    for (const [name, code] of Object.entries(codes)) if (code !== ErrorCode.LeaseNotWarranted) process.stdout.write(`  ${name}: ${code}\n`);
    expect(issued).toBe(0);
    expect(Object.values(codes).every((c) => c === ErrorCode.LeaseNotWarranted)).toBe(true);
    expect(ended).toBe(ErrorCode.LeaseNotWarranted);
    expect(replay).toBe(ErrorCode.LeaseAlreadyIssued);
    expect(denied).toBe(attacks.length + 1);
    expect(stepControl).toBe('ok');
    expect(previewControl).toBe('ok');
    expect(liveEnd.type).toBe('run.completed');
    expect(runEnd.type).toBe('run.completed');
    expect(preview.rows).toEqual([['40']]);
  }, 300_000);
});
