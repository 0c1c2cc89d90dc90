/**
 * Run now: pick a registered workflow, give its input (a form built from its JSON Schema
 * when it has one, JSON otherwise), start it, and follow it as it starts.
 */
import { useEffect, useMemo, useState, type FormEvent } from 'react';
import { apiPaths, DERIVED_RUN_ID_MARK, roleAllows, type ActionResponse, type JsonValue, type WorkflowsResponse } from '../../../src/api-types.js';
import { ApiError, describeError, get, post } from '../api.js';
import { ErrorAlert, Loading, useApp } from '../components.js';
import { useGet } from '../hooks.js';
import { navigate, useLocation, useTitle } from '../router.js';
import { defaultsOf, formFields, formProblems, SchemaForm, useJsonText } from '../schema-form.js';

type JsonObject = { [k: string]: JsonValue };

const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

/** A ULID made here, so a request sent twice (a retry, a double click) starts one run; never in the reserved space. */
function newRunId(): string {
  let t = Date.now();
  let time = '';
  for (let i = 0; i < 10; i++) {
    time = CROCKFORD[t % 32] + time;
    t = Math.floor(t / 32);
  }
  for (;;) {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    const rand = Array.from(bytes, (b) => CROCKFORD[b % 32]).join('');
    if (!rand.startsWith(DERIVED_RUN_ID_MARK)) return time + rand;
  }
}

export function StartRunView() {
  useTitle('Run now');
  const { tenant, session, toast } = useApp();
  const loc = useLocation();
  const catalog = useGet<WorkflowsResponse>(apiPaths.workflows(tenant));
  const workflows = catalog.data?.workflows ?? [];
  const [workflow, setWorkflow] = useState(loc.query.get('workflow') ?? '');
  const chosen = workflows.find((w) => w.id === workflow);
  const fields = useMemo(() => formFields(chosen?.inputSchema), [chosen]);
  const [asJson, setAsJson] = useState(false);
  const [value, setValue] = useState<JsonObject>({});
  const [text, setText] = useState('{}');
  const parsed = useJsonText(text);
  const [busy, setBusy] = useState(false);
  const [started, setStarted] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const allowed = roleAllows(session.role, 'start');
  const useForm = fields !== null && !asJson;

  // The first workflow's id, not the list: the list is a new array on every render.
  const firstWorkflow = workflows[0]?.id;
  useEffect(() => {
    if (!workflow && firstWorkflow) setWorkflow(firstWorkflow);
  }, [workflow, firstWorkflow]);
  useEffect(() => {
    const start = fields ? defaultsOf(fields) : {};
    setValue(start);
    setText(JSON.stringify(start, null, 2));
    setAsJson(false);
  }, [fields]);

  const problems = useForm && fields ? formProblems(fields, value) : {};
  const input = useForm ? value : parsed.value;
  const ready = allowed && !busy && !!chosen && input !== null && Object.keys(problems).length === 0;

  const switchTo = (json: boolean) => {
    if (json) setText(JSON.stringify(value, null, 2));
    else if (parsed.value) setValue(parsed.value);
    setAsJson(json);
  };

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!ready || !chosen || !input) return;
    setBusy(true);
    setError(null);
    try {
      const res = await post<ActionResponse>(apiPaths.runs(tenant), { workflow: chosen.id, input, runId: newRunId() });
      const runId = res.runId ?? '';
      setStarted(runId);
      toast(`Started ${chosen.id}: ${runId}.`);
      // The run is on its stream now; the projections show it a moment later.
      for (let i = 0; i < 50; i++) {
        try {
          await get(apiPaths.run(tenant, runId));
          navigate(`/t/${encodeURIComponent(tenant)}/runs/${encodeURIComponent(runId)}`);
          return;
        } catch (err) {
          if (!(err instanceof ApiError && err.status === 404)) throw err;
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    } catch (err) {
      setError(err);
      const { code, message } = describeError(err);
      toast(`${message} (${code})`, 'error');
    } finally {
      setBusy(false);
    }
  };

  return (
    <>
      <div className="page-head">
        <div>
          <h1>Run now</h1>
          <div className="sub">
            Start a run of any workflow registered in {tenant}.{allowed ? '' : ' Starting runs needs the operator role.'}
          </div>
        </div>
      </div>
      <div className="card">
        <div className="card-body">
          {catalog.error ? <ErrorAlert error={catalog.error} title="The workflows could not be listed (is an orchestrator running?)" onRetry={catalog.reload} /> : null}
          {catalog.loading && !catalog.data ? <Loading what="workflows" /> : null}
          {catalog.data ? (
            <form onSubmit={(e) => void submit(e)} data-testid="start-form">
              <div className="form-grid">
                <div className="field">
                  <label htmlFor="start-workflow">Workflow</label>
                  <select id="start-workflow" value={workflow} onChange={(e) => setWorkflow(e.target.value)} data-testid="start-workflow">
                    {workflows.map((w) => (
                      <option key={w.id} value={w.id}>
                        {w.id} (v{w.version})
                      </option>
                    ))}
                  </select>
                  {chosen && chosen.steps.length > 0 ? <span className="hint">Steps: {chosen.steps.join(' → ')}</span> : null}
                </div>
              </div>
              <h2 style={{ fontSize: '1rem', margin: '16px 0 8px' }}>Input</h2>
              {useForm && fields ? (
                <SchemaForm fields={fields} value={value} onChange={setValue} problems={problems} />
              ) : (
                <div className="field">
                  <label htmlFor="start-input">Input (a JSON object)</label>
                  <textarea id="start-input" value={text} onChange={(e) => setText(e.target.value)} spellCheck={false} data-testid="start-input-json" />
                  {parsed.error ? (
                    <span className="field-error" data-testid="start-input-error">
                      {parsed.error}
                    </span>
                  ) : (
                    <span className="hint">{chosen?.inputSchema ? "This workflow's input schema is too rich for a form." : 'This workflow declares no input schema.'}</span>
                  )}
                </div>
              )}
              <div className="actions" style={{ marginTop: 16 }}>
                <button type="submit" className="btn btn-primary" disabled={!ready} data-testid="start-submit" title={allowed ? 'Start the run' : 'Needs the operator role'}>
                  {busy ? 'Starting…' : 'Start run'}
                </button>
                {fields !== null ? (
                  <button type="button" className="btn btn-ghost" onClick={() => switchTo(!asJson)} data-testid="start-toggle-json">
                    {asJson ? 'Use the form' : 'Edit as JSON'}
                  </button>
                ) : null}
                {started ? (
                  <span className="hint" data-testid="start-status">
                    Started <code>{started}</code>; opening it…
                  </span>
                ) : null}
              </div>
              {error ? <ErrorAlert error={error} title="The run was not started" /> : null}
            </form>
          ) : null}
        </div>
      </div>
    </>
  );
}
