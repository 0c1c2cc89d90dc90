/**
 * `capstan policy set|get|history|test` as a user runs them (the built CLI, a process),
 * against the real nats-server and a policy service: a valid file becomes a version; an
 * invalid one prints Cedar's diagnostics located in the file, exits 1 and stores nothing;
 * get prints the text as set; test prints each decision, under the version in force or a
 * candidate file.
 */
import { Role } from '@capstan/schemas';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { policyHistory } from '@capstan/kit';
import { createPolicyService, loadConfig, type PolicyService } from '@capstan/policy';
import type { TenantId } from '@capstan/schemas';
import { connect, provision, runCli, silent, type Harness, serviceEnv } from '../harness/fixtures.js';

let url: string;
let h: Harness;
let t: TenantId;
let service: PolicyService;
let dir: string;

const capstan = (args: string[]) => runCli(args, { NATS_URL: url, CAPSTAN_USER: 'cli-user' });
const file = (name: string, body: string) => {
  const p = join(dir, name);
  writeFileSync(p, body);
  return p;
};

beforeAll(async () => {
  url = inject('natsUrl');
  h = await connect(url);
  t = await provision(h, 'polcli');
  service = await createPolicyService(loadConfig({ ...(await serviceEnv(url, Role.Policy)), CAPSTAN_TENANTS: t }), silent);
  await service.start();
  dir = mkdtempSync(join(tmpdir(), 'capstan-policy-cli-'));
});

afterAll(async () => {
  await service?.stop();
  await h?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('capstan policy', () => {
  it('policy - set prints the new version; get prints the text; history lists who and why', async () => {
    const text = `@id("inline")\npermit(principal in Workflow::"${t}/etl", action == Action::"run-step", resource) when { resource.level == 0 };\n@approval("operators")\npermit(principal, action == Action::"lease-secret", resource == Secret::"${t}/DEMO_TOKEN");\n`;
    const set = await capstan(['policy', 'set', '--tenant', t, '--file', file('p.cedar', text), '--reason', 'first']);
    expect(set.err).toBe('');
    expect(set.code).toBe(0);
    expect(set.out).toMatch(/stored policy version 1 of .* as cli-user/);
    const again = await capstan(['policy', 'set', '--tenant', t, '--file', join(dir, 'p.cedar')]);
    expect(again.out).toMatch(/unchanged: version 1/);

    const get = await capstan(['policy', 'get', '--tenant', t]);
    expect(get.code).toBe(0);
    expect(get.out).toBe(text);
    expect(get.err).toMatch(/version 1, set by cli-user .*: first/);

    const hist = await capstan(['policy', 'history', '--tenant', t, '--json']);
    expect(JSON.parse(hist.out)).toMatchObject({ latest: 1, versions: [{ version: 1, by: 'cli-user', reason: 'first', valid: true }] });
    expect((await capstan(['policy', 'history', '--tenant', t])).out).toMatch(/VERSION[\s\S]*1 \*[\s\S]*cli-user/);
  });

  it("policy - an invalid file exits 1 with Cedar's diagnostics, located in the file; nothing is stored", async () => {
    const bad = file('bad.cedar', 'permit(principal, action == Action::"egress", resource);\npermit(principal, action == Action::"lease-secrett", resource);\n');
    const r = await capstan(['policy', 'set', '--tenant', t, '--file', bad]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/policy_invalid: .*bad\.cedar is not a valid policy; nothing was stored/);
    expect(r.err).toMatch(
      new RegExp(`${bad.replaceAll('.', '\\.')}:2:\\d+ \\[policy1\\] error: for policy \`policy1\`, unrecognized action \`Action::"lease-secrett"\` \\(help: did you mean`),
    );
    const parse = await capstan(['policy', 'set', '--tenant', t, '--file', file('cut.cedar', 'permit(principal,')]);
    expect(parse.code).toBe(1);
    expect(parse.err).toMatch(/cut\.cedar:1:\d+ error: failed to parse policies/);
    expect((await policyHistory(await h.nc(t), t)).latest).toBe(1);
  });

  it('policy - test prints each decision and the combined one, under the version in force or a candidate', async () => {
    const queries = file(
      'q.json',
      JSON.stringify([
        { action: 'run-step', workflow: 'etl', step: 'load', mode: 0 },
        { action: 'lease-secret', workflow: 'etl', step: 'load', secret: 'DEMO_TOKEN' },
        { action: 'egress', workflow: 'etl', step: 'load', host: 'api.github.com:443' },
      ]),
    );
    const r = await capstan(['policy', 'test', '--tenant', t, '--file', queries]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/under policy version 1/);
    expect(r.out).toMatch(/run-step mode 0 by etl\/load: allow \[inline\]/);
    expect(r.out).toMatch(/lease-secret DEMO_TOKEN by etl\/load: needs-approval \(approvers: operators\) \[policy1\]/);
    expect(r.out).toMatch(/egress api\.github\.com:443 by etl\/load: deny \[no policy permits it\]/);
    expect(r.out).toMatch(/all together: deny/);

    const cand = file('cand.cedar', `permit(principal, action == Action::"egress", resource) when { resource.port == 443 };`);
    const c = await capstan([
      'policy',
      'test',
      '--tenant',
      t,
      '--policy',
      cand,
      '--action',
      'egress',
      '--workflow',
      'etl',
      '--step',
      'load',
      '--host',
      'api.github.com:443',
      '--json',
    ]);
    expect(c.code).toBe(0);
    expect(JSON.parse(c.out)).toMatchObject({ candidate: true, version: 0, decisions: [{ decision: 'allow', policies: ['policy0'] }] });
    const unknown = await capstan(['policy', 'test', '--tenant', t, '--action', 'fly', '--workflow', 'etl', '--step', 'load']);
    expect(unknown.out).toMatch(/deny[\s\S]*unknown action "fly"/);
  });

  it('policy - usage errors exit 2, a missing version exits 3', async () => {
    expect((await capstan(['policy', 'set', '--tenant', t])).code).toBe(2);
    expect((await capstan(['policy', 'frob', '--tenant', t])).code).toBe(2);
    expect((await capstan(['policy', 'test', '--tenant', t])).code).toBe(2);
    expect((await capstan(['policy', 'set', '--tenant', t, '--file', join(dir, 'missing.cedar')])).err).toMatch(/cannot read policy file .*ENOENT/);
    const missing = await capstan(['policy', 'get', '--tenant', t, '--version', '9']);
    expect(missing.code).toBe(3);
    expect(missing.err).toMatch(/policy_version_not_found: policy version 9 does not exist \(the latest is 1\)/);
  });
});
