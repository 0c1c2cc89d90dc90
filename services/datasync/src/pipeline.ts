/**
 * The five steps of a pipeline run, run where the tenant's data lives:
 *
 * 1. **Retrieve**: lease the connection's credentials, open the source, and in one
 *    read-only snapshot (REPEATABLE READ) check the model's tables and columns (the schema
 *    fingerprint), then stream each table's rows (only those past the entity's incremental
 *    cursor, when it has one and the last load was of the same specs) through a server-side
 *    cursor into staging. The new cursor values are kept with the step, not returned.
 * 2. **Refresh**: compare the retrieved rows with what the last load left (a fingerprint
 *    per key): only rows that are new or changed go on.
 * 3. **Build model**: map the changed rows to the model's records (fields, casts, keys);
 *    keys must be present and unique.
 * 4. **Resolve associations**: for each association, keep the reference where its target
 *    exists (in this run, or loaded before), count the ones that point at nothing.
 * 5. **Load**: write the records to the destination in batches (see destinations.ts), then
 *    commit the pipeline's state (fingerprints, cursors) in one transaction and let go of
 *    the pipeline.
 *
 * Every step returns metadata only. A step records its result when it finishes: a repeated
 * attempt of a finished step returns that result without doing the work again, and two
 * attempts of one step never run at once (an advisory lock per run and step). A run holds
 * its pipeline from Retrieve to Load (a claim with a time limit), so two runs of the same
 * pipeline cannot interleave their loads.
 */
import { once } from 'node:events';
import type pg from 'pg';
import copyStreams from 'pg-copy-streams';
import type { JetStreamManager } from '@nats-io/jetstream';
import {
  CapstanError,
  CatalogKind,
  decode,
  ErrorCode,
  parseRunEvent,
  parseRunId,
  Streams,
  Subjects,
  parseStepResult,
  PipelineStep,
  type ConnectionSpec,
  type DatasyncProgress,
  type DatasyncStepRequest,
  type DatasyncStepResult,
  type DestinationSpec,
  type ModelSpec,
  type TenantId,
  AuditKind,
} from '@capstan/schemas';
import { failpoint, type AuditSink, type Logger, type NatsConnection, type Signer } from '@capstan/kit';
import type { Catalog } from './catalog.js';
import type { Config } from './config.js';
import { openPostgres, statementError } from './connect.js';
import { destinationFolder, filesDestination, postgresDestination, type BatchSource, type Column, type DestinationWriter, type EntityOut } from './destinations.js';
import { buildPlan, fieldExpr, pipelineId, stagingTables, type EntityPlan, type Plan } from './plan.js';
import { copyValue, portableType, q, sha256, short, STATE_SCHEMA } from './sql.js';

export interface StepRun {
  readonly tenant: TenantId;
  readonly req: DatasyncStepRequest;
  readonly signal: AbortSignal;
  readonly progress: (p: DatasyncProgress) => void;
}

export interface PipelineDeps {
  readonly pool: pg.Pool;
  readonly catalog: Catalog;
  /** The service's connection to a tenant's account: leases, and reading its runs. */
  readonly tenant: (t: TenantId) => { readonly nc: NatsConnection; readonly jsm: JetStreamManager; readonly signer?: Signer | undefined };
  /** Where the load's intent is recorded before it writes (the data plane's audit_log). */
  readonly audit: AuditSink;
  readonly config: Config;
  readonly log: Logger;
}

/** What Retrieve hands the later steps of its run (kept in the data plane, never in the run). */
interface RetrieveState {
  readonly specFingerprint: string;
  readonly full: boolean;
  /** Per entity with a cursor column: the largest value retrieved (or the previous one). */
  readonly cursors: Record<string, string | null>;
  readonly raw: Record<string, number>;
}

interface Specs {
  readonly connection: ConnectionSpec;
  readonly model: ModelSpec;
  readonly destination: DestinationSpec;
  readonly destinationConnection?: ConnectionSpec;
  /** Over every spec the run depends on: a change of any means a full run. */
  readonly fingerprint: string;
}

const textOnly = { getTypeParser: () => (v: string) => v } as unknown as pg.CustomTypesConfig;
const LOCK_WAIT_MS = 30_000;
const TERMINAL: ReadonlySet<string> = new Set(['run.completed', 'run.failed', 'run.cancelled']);

export interface PipelineRunner {
  run(s: StepRun): Promise<DatasyncStepResult>;
  /**
   * Drops the staging of runs that ended without loading (failed, cancelled) and were last
   * touched more than `olderThanMs` ago, with their step records. Returns how many runs.
   */
  sweep(olderThanMs: number): Promise<number>;
}

export function createPipelineRunner(d: PipelineDeps): PipelineRunner {
  const { pool, catalog, config } = d;

  /** Whether a run's last event ends it (read from its stream: the truth, not a projection). */
  async function runEnded(t: TenantId, runId: string): Promise<boolean> {
    try {
      const m = await d.tenant(t).jsm.direct.getMessage(Streams.runs(t), { last_by_subj: Subjects.run(t, parseRunId(runId)) });
      return m ? TERMINAL.has(parseRunEvent(decode(m.data)).type) : false;
    } catch {
      return false;
    }
  }

  async function specsOf(t: TenantId, req: DatasyncStepRequest): Promise<Specs> {
    const connection = await catalog.spec(t, CatalogKind.Connection, req.connection);
    const model = await catalog.spec(t, CatalogKind.Model, req.model);
    const destination = await catalog.spec(t, CatalogKind.Destination, req.destination);
    const destConn = destination.spec.type === 'postgres' ? await catalog.spec(t, CatalogKind.Connection, destination.spec.connection) : undefined;
    return {
      connection: connection.spec,
      model: model.spec,
      destination: destination.spec,
      ...(destConn ? { destinationConnection: destConn.spec } : {}),
      fingerprint: sha256(req.connection, connection.fingerprint, req.model, model.fingerprint, req.destination, destination.fingerprint, destConn?.fingerprint ?? ''),
    };
  }

  /** Holds the run's step: one attempt at a time (a session advisory lock on a client kept for the step). */
  async function lockStep(t: TenantId, req: DatasyncStepRequest, signal: AbortSignal): Promise<pg.PoolClient> {
    const c = await pool.connect();
    const key = `capstan.datasync.step:${t}:${req.runId}:${req.step}`;
    const deadline = Date.now() + LOCK_WAIT_MS;
    try {
      for (;;) {
        const got = (await c.query<{ ok: boolean }>('select pg_try_advisory_lock(hashtextextended($1, 0)) as ok', [key])).rows[0]?.ok;
        if (got) return c;
        if (Date.now() > deadline || signal.aborted) throw new CapstanError(ErrorCode.PipelineBusy, `step ${req.step} of run ${req.runId} is running in another attempt`, true);
        await new Promise((r) => setTimeout(r, 250));
      }
    } catch (e) {
      c.release();
      throw e;
    }
  }

  async function recorded(t: TenantId, runId: string, step: string): Promise<{ state: unknown; result: unknown } | undefined> {
    return (await pool.query<{ state: unknown; result: unknown }>('select state, result from datasync_run_steps where tenant = $1 and run_id = $2 and step = $3', [t, runId, step]))
      .rows[0];
  }

  async function record(c: pg.ClientBase, t: TenantId, runId: string, step: string, pipeline: string, state: unknown, result: DatasyncStepResult): Promise<void> {
    await c.query('insert into datasync_run_steps (tenant, run_id, step, pipeline, state, result) values ($1, $2, $3, $4, $5, $6) on conflict do nothing', [
      t,
      runId,
      step,
      pipeline,
      JSON.stringify(state),
      JSON.stringify(result),
    ]);
  }

  async function run(s: StepRun): Promise<DatasyncStepResult> {
    const { tenant: t, req } = s;
    const specs = await specsOf(t, req);
    const pipeline = pipelineId(t, req);
    const plan = buildPlan(t, req.runId, pipeline, specs.model);
    const lock = await lockStep(t, req, s.signal);
    let failed = false;
    try {
      const done = await recorded(t, req.runId, req.step);
      // A finished step answers again with what it returned; nothing is done twice.
      if (done) return parseStepResult(done.result);
      const t0 = performance.now();
      const ctx: Ctx = { ...s, specs, plan, pipeline, t0, work: lock };
      if (req.step === PipelineStep.Retrieve) return await retrieve(ctx);
      const prior = await recorded(t, req.runId, PipelineStep.Retrieve);
      if (!prior) throw new CapstanError(ErrorCode.EventRejected, `run ${req.runId} has no retrieved data for step ${req.step} (Retrieve did not finish here)`, false);
      const state = prior.state as RetrieveState;
      if (state.specFingerprint !== specs.fingerprint) {
        throw new CapstanError(ErrorCode.SchemaMismatch, `the connection, model or destination changed since run ${req.runId} retrieved its data; start a new run`, false);
      }
      await holdClaim(ctx);
      switch (req.step) {
        case PipelineStep.Refresh:
          return await refresh(ctx, state);
        case PipelineStep.Build:
          return await build(ctx);
        case PipelineStep.Resolve:
          return await resolveAssociations(ctx, state);
        case PipelineStep.Load:
          return await load(ctx, state);
      }
    } catch (e) {
      failed = true;
      if (s.signal.aborted && !CapstanError.is(e)) throw abortError(s);
      throw CapstanError.is(e) ? e : statementError(e, `step ${req.step}`);
    } finally {
      await lock.query('select pg_advisory_unlock_all()').catch(() => undefined);
      // A step that failed may have left its connection mid-COPY or mid-transaction: not reused.
      lock.release(failed);
    }
  }

  interface Ctx extends StepRun {
    readonly specs: Specs;
    readonly plan: Plan;
    readonly pipeline: string;
    readonly t0: number;
    /** A data-plane connection held for the step (it also holds the step's lock). */
    readonly work: pg.PoolClient;
  }

  const ref = (c: Ctx) => `ds:${short(c.tenant, c.req.runId)}/${c.req.step}`;
  const ms = (c: Ctx) => Math.round(performance.now() - c.t0);
  function abortError(s: StepRun): CapstanError {
    return new CapstanError(ErrorCode.Cancelled, `step ${s.req.step} attempt ${s.req.attempt} was stopped`, true);
  }
  function checkAbort(s: StepRun): void {
    if (s.signal.aborted) throw abortError(s);
  }

  /** The run still holds its pipeline (and holds it a while longer). */
  async function holdClaim(c: Ctx): Promise<void> {
    const res = await pool.query(
      `update datasync_pipelines set claim_expires_at = now() + make_interval(secs => $4::double precision / 1000)
        where tenant = $1 and pipeline = $2 and claimed_by = $3`,
      [c.tenant, c.pipeline, c.req.runId, config.claimTtlMs],
    );
    if (res.rowCount === 0)
      throw new CapstanError(ErrorCode.PipelineBusy, `run ${c.req.runId} no longer holds its pipeline (its claim expired and another run took it); start a new run`, false);
  }

  // -------------------------------------------------------------------------------------
  // 1. Retrieve.

  async function retrieve(c: Ctx): Promise<DatasyncStepResult> {
    const { tenant: t, req } = c;
    const claim = (
      await pool.query<{ cursors: Record<string, string | null>; spec_fingerprint: string | null; committed_run: string | null; claimed_by: string }>(
        `insert into datasync_pipelines (tenant, pipeline, connection, model, destination, claimed_by, claim_expires_at)
         values ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7::double precision / 1000))
         on conflict (tenant, pipeline) do update set claimed_by = excluded.claimed_by, claim_expires_at = excluded.claim_expires_at
          where datasync_pipelines.claimed_by is null or datasync_pipelines.claimed_by = excluded.claimed_by or datasync_pipelines.claim_expires_at < now()
         returning cursors, spec_fingerprint, committed_run, claimed_by`,
        [t, c.pipeline, req.connection, req.model, req.destination, req.runId, config.claimTtlMs],
      )
    ).rows[0];
    if (!claim) {
      // The holder may have ended without letting go (it failed, or was cancelled): then its claim is free.
      const holder = (await pool.query<{ claimed_by: string }>('select claimed_by from datasync_pipelines where tenant = $1 and pipeline = $2', [t, c.pipeline])).rows[0]
        ?.claimed_by;
      if (holder && (await runEnded(t, holder))) {
        await pool.query('update datasync_pipelines set claimed_by = null, claim_expires_at = null where tenant = $1 and pipeline = $2 and claimed_by = $3', [
          t,
          c.pipeline,
          holder,
        ]);
        d.log.info({ tenant: t, runId: req.runId, holder }, 'pipeline claim of an ended run released');
        return retrieve(c);
      }
      throw new CapstanError(ErrorCode.PipelineBusy, `run ${holder ?? '?'} holds pipeline ${req.connection} → ${req.destination}; this step is tried again`, true);
    }
    const full = !claim.committed_run || claim.spec_fingerprint !== c.specs.fingerprint;
    const previous = full ? {} : claim.cursors;
    const src = await openPostgres(c.specs.connection, {
      nc: d.tenant(t).nc,
      signer: d.tenant(t).signer,
      tenant: t,
      scope: { runId: req.runId, step: req.step, attempt: req.attempt },
      connectTimeoutMs: config.connectTimeoutMs,
      application: 'capstan-datasync',
    });
    const stop = () => void src.end().catch(() => undefined);
    c.signal.addEventListener('abort', stop, { once: true });
    const cursors: Record<string, string | null> = {};
    const raw: Record<string, number> = {};
    const counts: DatasyncStepResult['entities'] = [];
    const schema: string[] = [];
    let rows = 0;
    let bytes = 0;
    try {
      await src.query('begin transaction isolation level repeatable read read only');
      const types = new Map<string, Map<string, string>>();
      for (const e of c.plan.entities) types.set(e.name, await sourceColumns(src, e, schema));
      for (const e of c.plan.entities) {
        checkAbort(c);
        const cols = types.get(e.name) as Map<string, string>;
        const since = e.cursor ? (previous[e.name] ?? null) : null;
        const n = await stageTable(c, src, e, cols, since, (r, b) => {
          c.progress({ phase: 'retrieve', rows: rows + r, bytes: bytes + b });
        });
        rows += n.rows;
        bytes += n.bytes;
        raw[e.name] = n.rows;
        counts.push({ name: e.name, rows: n.rows, bytes: n.bytes });
        if (e.cursor) {
          const max = (await c.work.query<{ v: string | null }>({ text: `select max(${q(e.cursor)})::text as v from ${e.raw}`, types: textOnly })).rows[0]?.v ?? null;
          cursors[e.name] = max ?? since;
        }
      }
      await src.query('commit');
    } catch (e) {
      throw statementError(e, 'retrieving from the source');
    } finally {
      c.signal.removeEventListener('abort', stop);
      await src.end().catch(() => undefined);
    }
    const result: DatasyncStepResult = { step: 'retrieve', rows, bytes, durationMs: ms(c), entities: counts, schemaFingerprint: sha256(...schema), full, ref: ref(c) };
    const state: RetrieveState = { specFingerprint: c.specs.fingerprint, full, cursors, raw };
    await record(c.work, t, req.runId, req.step, c.pipeline, state, result);
    return result;
  }

  /** The entity's source columns and their types, as the source says; a missing table or column stops the run. */
  async function sourceColumns(src: pg.Client, e: EntityPlan, schema: string[]): Promise<Map<string, string>> {
    const res = await src.query<{ name: string; type: string }>(
      `select a.attname as name, format_type(a.atttypid, a.atttypmod) as type from pg_attribute a
        where a.attrelid = to_regclass($1) and a.attnum > 0 and not a.attisdropped order by a.attnum`,
      [e.sourceTable],
    );
    if (res.rows.length === 0)
      throw new CapstanError(ErrorCode.SchemaMismatch, `entity ${e.name}: the source has no table ${e.sourceTable} (or this connection's user cannot see it)`, false);
    const all = new Map(res.rows.map((r) => [r.name, r.type]));
    const missing = e.columns.filter((col) => !all.has(col));
    if (missing.length > 0) throw new CapstanError(ErrorCode.SchemaMismatch, `entity ${e.name}: ${e.sourceTable} has no column ${missing.join(', ')}`, false);
    const cols = new Map(e.columns.map((col) => [col, all.get(col) as string]));
    schema.push(`${e.name}:${e.sourceTable}:${[...cols].map(([k, v]) => `${k} ${v}`).join(',')}`);
    return cols;
  }

  /** Streams one table from the source's server-side cursor into its staging table. */
  async function stageTable(
    c: Ctx,
    src: pg.Client,
    e: EntityPlan,
    cols: Map<string, string>,
    since: string | null,
    onProgress: (rows: number, bytes: number) => void,
  ): Promise<{ rows: number; bytes: number }> {
    await c.work.query(`drop table if exists ${e.raw}`);
    await c.work.query(`create unlogged table ${e.raw} (${[...cols].map(([n, ty]) => `${q(n)} ${portableType(ty)}`).join(', ')})`);
    const list = e.columns.map(q).join(', ');
    const where = e.cursor && since !== null ? ` where ${q(e.cursor)} > $1` : '';
    await src.query(`declare capstan_retrieve no scroll cursor for select ${list} from ${e.sourceTable}${where}`, where ? [since] : []);
    const sink = c.work.query(copyStreams.from(`copy ${e.raw} (${list}) from stdin`));
    const finished = once(sink, 'finish');
    const failed = new Promise<never>((_, reject) => sink.once('error', reject));
    let rows = 0;
    let bytes = 0;
    try {
      for (;;) {
        checkAbort(c);
        const res = await src.query({ text: `fetch ${config.fetchRows} from capstan_retrieve`, rowMode: 'array' });
        if (res.rows.length === 0) break;
        let text = '';
        for (const r of res.rows as (string | null)[][]) text += `${r.map(copyValue).join('\t')}\n`;
        rows += res.rows.length;
        bytes += Buffer.byteLength(text);
        if (!sink.write(text)) await Promise.race([once(sink, 'drain'), failed]);
        onProgress(rows, bytes);
      }
      sink.end();
      await Promise.race([finished, failed]);
    } catch (err) {
      sink.destroy();
      throw err;
    }
    await src.query('close capstan_retrieve');
    return { rows, bytes };
  }

  // -------------------------------------------------------------------------------------
  // 2. Refresh.

  const keyExprs = (e: EntityPlan) => e.key.map((k) => fieldExpr(e.fields.find((f) => f.name === k) as (typeof e.fields)[number]));

  async function refresh(c: Ctx, state: RetrieveState): Promise<DatasyncStepResult> {
    const counts: DatasyncStepResult['entities'] = [];
    let rows = 0;
    for (const e of c.plan.entities) {
      checkAbort(c);
      await ensureStateTable(c, e);
      await c.work.query(`drop table if exists ${e.chg}`);
      const same = e.key.map((k, i) => `s.${q(k)} = ${keyExprs(e)[i] as string}`).join(' and ');
      // The fingerprint is over the columns the model reads (not the cursor's, unless it is a
      // field): a row touched without a change stops here.
      const fp = `md5(row(${[...new Set(e.fields.map((f) => f.column))].map((col) => `r.${q(col)}`).join(', ')})::text)`;
      await c.work.query(
        `create unlogged table ${e.chg} as
           select r.*, ${fp} as "_fp" from ${e.raw} r
            ${state.full ? '' : `where not exists (select 1 from ${e.state} s where ${same} and s."_fp" = ${fp})`}`,
      );
      const n = Number((await c.work.query<{ n: string }>(`select count(*) as n from ${e.chg}`)).rows[0]?.n ?? 0);
      const retrieved = state.raw[e.name] ?? n;
      rows += n;
      counts.push({ name: e.name, rows: n, unchanged: Math.max(0, retrieved - n) });
      c.progress({ phase: 'refresh', rows, bytes: 0 });
    }
    const result: DatasyncStepResult = { step: 'refresh', rows, bytes: 0, durationMs: ms(c), entities: counts, full: state.full, ref: ref(c) };
    await record(c.work, c.tenant, c.req.runId, c.req.step, c.pipeline, {}, result);
    return result;
  }

  /** The per-pipeline table of what was loaded (key → fingerprint), typed like the model's key fields. */
  async function ensureStateTable(c: Ctx, e: EntityPlan): Promise<void> {
    const exists = (await c.work.query<{ r: string | null }>('select to_regclass($1)::text as r', [e.state])).rows[0]?.r;
    if (exists) return;
    const keys = e.key.map((k, i) => `${keyExprs(e)[i] as string} as ${q(k)}`).join(', ');
    await c.work.query(`create table if not exists ${e.state} as select ${keys}, ''::text as "_fp" from ${e.raw} r with no data`);
    await c.work.query(`alter table ${e.state} add primary key (${e.key.map(q).join(', ')})`);
  }

  // -------------------------------------------------------------------------------------
  // 3. Build model.

  async function build(c: Ctx): Promise<DatasyncStepResult> {
    const counts: DatasyncStepResult['entities'] = [];
    const schema: string[] = [];
    let rows = 0;
    for (const e of c.plan.entities) {
      checkAbort(c);
      await c.work.query(`drop table if exists ${e.mdl}`);
      const fields = e.fields.map((f) => `${fieldExpr(f)} as ${q(f.name)}`).join(', ');
      await c.work.query(`create unlogged table ${e.mdl} as select (row_number() over ())::bigint as "_n", ${fields}, r."_fp" from ${e.chg} r`);
      try {
        await c.work.query(`alter table ${e.mdl} add primary key (${e.key.map(q).join(', ')})`);
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code === '23505') throw new CapstanError(ErrorCode.SchemaMismatch, `entity ${e.name}: key (${e.key.join(', ')}) is not unique in ${e.sourceTable}`, false);
        if (code === '23502') throw new CapstanError(ErrorCode.SchemaMismatch, `entity ${e.name}: key (${e.key.join(', ')}) is null in some rows of ${e.sourceTable}`, false);
        throw err;
      }
      await c.work.query(`create unique index on ${e.mdl} ("_n")`);
      const n = Number((await c.work.query<{ n: string }>(`select count(*) as n from ${e.mdl}`)).rows[0]?.n ?? 0);
      schema.push(`${e.name}:${(await columnsOf(c.work, e.mdl)).map((col) => `${col.name} ${col.type}`).join(',')}`);
      rows += n;
      counts.push({ name: e.name, rows: n });
      c.progress({ phase: 'build', rows, bytes: 0 });
    }
    const result: DatasyncStepResult = { step: 'build', rows, bytes: 0, durationMs: ms(c), entities: counts, schemaFingerprint: sha256(...schema), ref: ref(c) };
    await record(c.work, c.tenant, c.req.runId, c.req.step, c.pipeline, {}, result);
    return result;
  }

  /** A staging table's record columns (not `_n`, not `_fp`) with their types. */
  async function columnsOf(client: pg.ClientBase, table: string): Promise<Column[]> {
    const res = await client.query<{ name: string; type: string }>(
      `select a.attname as name, format_type(a.atttypid, a.atttypmod) as type from pg_attribute a
        where a.attrelid = to_regclass($1) and a.attnum > 0 and not a.attisdropped and a.attname not in ('_n', '_fp') order by a.attnum`,
      [table],
    );
    return res.rows;
  }

  // -------------------------------------------------------------------------------------
  // 4. Resolve associations.

  async function resolveAssociations(c: Ctx, state: RetrieveState): Promise<DatasyncStepResult> {
    const counts: DatasyncStepResult['entities'] = [];
    let rows = 0;
    for (const e of c.plan.entities) {
      checkAbort(c);
      const n = Number((await c.work.query<{ n: string }>(`select count(*) as n from ${e.mdl}`)).rows[0]?.n ?? 0);
      rows += n;
      if (e.associations.length === 0) {
        counts.push({ name: e.name, rows: n, resolved: 0, dangling: 0 });
        continue;
      }
      const selects: string[] = [];
      const tallies: string[] = [];
      for (const a of e.associations) {
        const target = c.plan.byName.get(a.to) as EntityPlan;
        const match = (alias: string) => target.key.map((k, i) => `${alias}.${q(k)} = m.${q(a.fields[i] as string)}`).join(' and ');
        const present = a.fields.map((f) => `m.${q(f)} is not null`).join(' and ');
        // The target was built in this run, or loaded before (not for a full run: all of it is in this one).
        const found = `exists (select 1 from ${target.mdl} x where ${match('x')})${state.full ? '' : ` or exists (select 1 from ${target.state} s where ${match('s')})`}`;
        a.columns.forEach((col, i) => selects.push(`case when ${present} and (${found}) then m.${q(a.fields[i] as string)} end as ${q(col)}`));
        tallies.push(
          `count(*) filter (where ${q(a.columns[0] as string)} is not null)`,
          `count(*) filter (where ${a.fields.map((f) => `${q(f)} is not null`).join(' and ')} and ${q(a.columns[0] as string)} is null)`,
        );
      }
      await c.work.query(`drop table if exists ${e.res}`);
      await c.work.query(`create unlogged table ${e.res} as select m.*, ${selects.join(', ')} from ${e.mdl} m`);
      await c.work.query(`create unique index on ${e.res} ("_n")`);
      const t = (await c.work.query<Record<string, string>>({ text: `select ${tallies.map((x, i) => `${x} as c${i}`).join(', ')} from ${e.res}`, types: textOnly })).rows[0] ?? {};
      let resolved = 0;
      let dangling = 0;
      e.associations.forEach((_, i) => {
        resolved += Number(t[`c${i * 2}`] ?? 0);
        dangling += Number(t[`c${i * 2 + 1}`] ?? 0);
      });
      counts.push({ name: e.name, rows: n, resolved, dangling });
      c.progress({ phase: 'resolve', rows, bytes: 0 });
    }
    const result: DatasyncStepResult = { step: 'resolve', rows, bytes: 0, durationMs: ms(c), entities: counts, ref: ref(c) };
    await record(c.work, c.tenant, c.req.runId, c.req.step, c.pipeline, {}, result);
    return result;
  }

  // -------------------------------------------------------------------------------------
  // 5. Load.

  async function openDestination(c: Ctx): Promise<DestinationWriter> {
    const dest = c.specs.destination;
    if (dest.type === 'files') return filesDestination(destinationFolder(config.filesRoot, c.tenant, dest.path), dest.format, c.req.runId);
    const client = await openPostgres(c.specs.destinationConnection as ConnectionSpec, {
      nc: d.tenant(c.tenant).nc,
      signer: d.tenant(c.tenant).signer,
      tenant: c.tenant,
      scope: { runId: c.req.runId, step: c.req.step, attempt: c.req.attempt },
      connectTimeoutMs: config.connectTimeoutMs,
      application: 'capstan-datasync',
    });
    return postgresDestination(client, dest.schema, c.req.runId);
  }

  /** Reads batches of `_res` tables from the data plane's database. */
  function batchSource(): BatchSource {
    let held: pg.PoolClient | undefined;
    const release = () => {
      held?.release();
      held = undefined;
      return Promise.resolve();
    };
    return {
      async copyOut(e, lo, hi) {
        held = await pool.connect();
        const cols = [...e.columns.map((col) => q(col.name)), '"_fp"'].join(', ');
        return held.query(copyStreams.to(`copy (select ${cols} from ${e.plan.res} where "_n" between ${lo} and ${hi} order by "_n") to stdout`));
      },
      async rows(e, lo, hi, mode, each) {
        const client = await pool.connect();
        try {
          await client.query('begin transaction read only');
          const cols = e.columns.map((col) => q(col.name)).join(', ');
          const select = `select ${cols} from ${e.plan.res} where "_n" between ${lo} and ${hi} order by "_n"`;
          await client.query(`declare capstan_batch no scroll cursor for ${mode === 'json' ? `select row_to_json(x)::text from (${select}) x` : select}`);
          for (;;) {
            const res = await client.query({ text: `fetch ${Math.min(config.fetchRows, 5000)} from capstan_batch`, rowMode: 'array', types: textOnly });
            if (res.rows.length === 0) break;
            await each(res.rows as unknown[][]);
          }
          await client.query('commit');
        } catch (err) {
          await client.query('rollback').catch(() => undefined);
          throw err;
        } finally {
          client.release();
        }
      },
      release,
    };
  }

  async function load(c: Ctx, state: RetrieveState): Promise<DatasyncStepResult> {
    const batchRows = c.specs.destination.batchRows ?? config.batchRows;
    const outs: EntityOut[] = [];
    for (const e of c.plan.entities) outs.push({ plan: e, columns: await columnsOf(c.work, e.res), key: e.key });
    // Audit first: the intent to write to the tenant's destination is recorded before any
    // write; if it cannot be, nothing is written (`audit_unavailable`, retryable). One row
    // per run's load, whatever the attempts.
    await d.audit.appendIntent({
      tenant: c.tenant,
      runId: c.req.runId,
      kind: AuditKind.DatasyncLoadIntent,
      actor: 'datasync',
      key: sha256('datasync.load', c.tenant, c.req.runId),
      detail: { destination: c.req.destination, model: c.req.model, connection: c.req.connection, attempt: c.req.attempt, entities: c.plan.entities.map((e) => e.name) },
    });
    const writer = await openDestination(c);
    const stop = () => void writer.close();
    c.signal.addEventListener('abort', stop, { once: true });
    const counts: DatasyncStepResult['entities'] = [];
    const summary: Record<string, { batches: number; rows: number }> = {};
    let rows = 0;
    let bytes = 0;
    let resultRef: string;
    try {
      await writer.prepare(outs);
      const written = await writer.written();
      for (const e of outs) {
        const total = Number((await c.work.query<{ n: string }>(`select count(*) as n from ${e.plan.res}`)).rows[0]?.n ?? 0);
        const batches = Math.ceil(total / batchRows);
        const done = written.get(e.plan.name) ?? new Set<number>();
        let skipped = 0;
        let eBytes = 0;
        for (let b = 0; b < batches; b++) {
          checkAbort(c);
          const lo = b * batchRows + 1;
          const hi = Math.min(total, (b + 1) * batchRows);
          if (done.has(b)) {
            skipped++;
          } else {
            const w = await writer.write(e, b, lo, hi, batchSource());
            eBytes += w.bytes;
            failpoint('datasync.load.after_batch');
          }
          rows += hi - lo + 1;
          c.progress({ phase: 'load', rows, bytes: bytes + eBytes });
        }
        bytes += eBytes;
        counts.push({ name: e.plan.name, rows: total, bytes: eBytes, batches, skipped });
        summary[e.plan.name] = { batches, rows: total };
      }
      resultRef = await writer.finish({ entities: summary, full: state.full });
    } finally {
      c.signal.removeEventListener('abort', stop);
      await writer.close();
    }
    // The state's commit is part of the step's time: the result is made inside it.
    const result = await commit(c, state, () => ({ step: 'load', rows, bytes, durationMs: ms(c), entities: counts, full: state.full, ref: resultRef.slice(0, 124) }));
    // Staging is the run's own: gone once its load is committed (a failure here leaves it for the next sweep).
    for (const table of stagingTables(c.plan)) await c.work.query(`drop table if exists ${table}`).catch(() => undefined);
    return result;
  }

  /** The pipeline's state after a load, in one transaction: fingerprints, cursors, the claim let go, the step recorded. */
  async function commit(c: Ctx, state: RetrieveState, resultOf: () => DatasyncStepResult): Promise<DatasyncStepResult> {
    const w = c.work;
    await w.query('begin');
    try {
      const cur = (
        await w.query<{ cursors: Record<string, string | null> }>('select cursors from datasync_pipelines where tenant = $1 and pipeline = $2 and claimed_by = $3 for update', [
          c.tenant,
          c.pipeline,
          c.req.runId,
        ])
      ).rows[0];
      if (!cur)
        throw new CapstanError(
          ErrorCode.PipelineBusy,
          `run ${c.req.runId} no longer holds its pipeline; its records are loaded, its cursors are not kept (the next run moves them again)`,
          false,
        );
      for (const e of c.plan.entities) {
        const keys = e.key.map(q).join(', ');
        if (state.full) {
          // A full run replaces the state: built whole, then indexed (faster than upserting into an index).
          await w.query(`drop table if exists ${e.state}`);
          await w.query(`create table ${e.state} as select ${keys}, "_fp" from ${e.mdl}`);
          await w.query(`alter table ${e.state} add primary key (${keys})`);
        } else {
          await w.query(`insert into ${e.state} (${keys}, "_fp") select ${keys}, "_fp" from ${e.mdl} on conflict (${keys}) do update set "_fp" = excluded."_fp"`);
        }
      }
      const cursors = state.full ? state.cursors : { ...cur.cursors, ...state.cursors };
      failpoint('datasync.load.before_commit');
      await w.query(
        `update datasync_pipelines set cursors = $3, spec_fingerprint = $4, committed_run = $5, committed_at = now(), claimed_by = null, claim_expires_at = null
          where tenant = $1 and pipeline = $2`,
        [c.tenant, c.pipeline, JSON.stringify(cursors), state.specFingerprint, c.req.runId],
      );
      const result = resultOf();
      await record(w, c.tenant, c.req.runId, c.req.step, c.pipeline, {}, result);
      await w.query('commit');
      return result;
    } catch (e) {
      await w.query('rollback').catch(() => undefined);
      throw e;
    }
  }

  async function sweep(olderThanMs: number): Promise<number> {
    const stale = (
      await pool.query<{ tenant: string; run_id: string }>(
        `select tenant, run_id from datasync_run_steps group by tenant, run_id
          having bool_and(step <> 'load') and max(finished_at) < now() - make_interval(secs => $1::double precision / 1000)`,
        [olderThanMs],
      )
    ).rows;
    let swept = 0;
    for (const r of stale) {
      const t = r.tenant as TenantId;
      // A run that may still go on (or be retried by a person) keeps its staging until it has ended.
      if (!(await runEnded(t, r.run_id))) continue;
      const tables = (
        await pool.query<{ name: string }>(`select tablename as name from pg_tables where schemaname = $1 and tablename like $2`, [STATE_SCHEMA, `r${short(t, r.run_id)}\\_%`])
      ).rows;
      for (const { name } of tables) await pool.query(`drop table if exists ${q(STATE_SCHEMA)}.${q(name)}`);
      await pool.query('delete from datasync_run_steps where tenant = $1 and run_id = $2', [t, r.run_id]);
      d.log.info({ tenant: t, runId: r.run_id, tables: tables.length }, 'staging of an ended run swept');
      swept++;
    }
    return swept;
  }

  return { run, sweep };
}
