/**
 * `node test/dist/bench/proof.js`: what proving a decision costs, in process.
 *
 *   sign     a person's approve command: `proofHeaders` (sha256 of subject and body, Ed25519)
 *   verify   the orchestrator's check: `verifyProof` (the JWT's own signature, its issuer,
 *            expiry, then the message signature)
 *   a gated step's policy answer: the policy service signs its answer, the orchestrator
 *            verifies it, signs the `policy` command, and verifies that at intake
 *
 * Results go to docs/benchmarks.md (section `proof`). Options (env): BENCH_PROOF_ITER
 * (1000), BENCH_OUT.
 */
import { cpus } from 'node:os';
import { join } from 'node:path';
import { createAccount, createUser, encodeUser } from '@nats-io/jwt';
import { answerProofSubject, PROJECT_ROOT, proofHeaders, signerOf, verifyProof } from '@capstan/kit';
import { encode } from '@capstan/schemas';
import { percentile, writeSection } from './report.js';

const ITER = Number(process.env['BENCH_PROOF_ITER'] ?? 1000);
const OUT = process.env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const say = (s: string) => process.stderr.write(`${s}\n`);
const us = (ms: number) => (ms * 1000).toFixed(0);

const account = createAccount();
const trust = { accounts: [account.getPublicKey()] };
async function signer(name: string, role: string, groups: string[] = []) {
  const u = createUser();
  return signerOf(await encodeUser(name, u, account, { tags: ['capstan-tenant:bench', `capstan-role:${role}`, ...groups.map((g) => `capstan-group:${g}`)] }), u.getSeed());
}

function time(n: number, f: () => void): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    f();
    out.push(performance.now() - t0);
  }
  return out;
}

const ann = await signer('ann', 'operator', ['finance']);
const policy = await signer('policy@bench', 'policy');
const orch = await signer('orchestrator@bench', 'orchestrator');
const subject = 'cap.bench.cmd.approve';
const body = encode({ runId: '01HF7YAT00144GJ289144GJ289', step: 'deliver', reason: 'checked' });
const signed = proofHeaders(ann, subject, body);
// Warm up the JIT before measuring.
time(200, () => verifyProof(proofHeaders(ann, subject, body), subject, body, trust));

const sign = time(ITER, () => proofHeaders(ann, subject, body));
const verify = time(ITER, () => verifyProof(signed, subject, body, trust));
const question = encode({
  queries: [
    { action: 'run-step', workflow: 'w', step: 'deliver', mode: 2 },
    { action: 'lease-secret', workflow: 'w', step: 'deliver', secret: 'DEMO_TOKEN' },
  ],
});
const answer = encode({ decision: 'needs-approval', version: 3, policies: ['token-needs-finance'], approvers: 'finance' });
const cmdSubject = 'cap.bench.cmd.policy';
const cmd = encode({
  runId: '01HF7YAT00144GJ289144GJ289',
  step: 'deliver',
  attempt: 1,
  decision: 'needs-approval',
  version: 3,
  policies: ['token-needs-finance'],
  approvers: 'finance',
  expiresInMs: 3_600_000,
});
const gated = time(ITER, () => {
  const about = answerProofSubject('cap.bench.svc.policy.decide', question);
  verifyProof(proofHeaders(policy, about, answer), about, answer, trust);
  verifyProof(proofHeaders(orch, cmdSubject, cmd), cmdSubject, cmd, trust);
});

const row = (name: string, xs: number[]) => `| ${name} | ${ITER.toLocaleString('en-US')} | ${us(percentile(xs, 50))} | ${us(percentile(xs, 99))} |`;
const md = [
  '## Proofs: signing and verifying decisions',
  '',
  `\`node test/dist/bench/proof.js\` on ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, Node ${process.version}, one thread, in process (no NATS). Microseconds.`,
  '',
  '| what | n | p50 µs | p99 µs |',
  '| --- | ---: | ---: | ---: |',
  row('sign a decision (client)', sign),
  row('verify a decision (orchestrator intake)', verify),
  row('a gated step: policy signs + orchestrator verifies, signs, verifies at intake', gated),
  '',
  "Per run: one verification per signed submit and per person's decision; per policy-gated step, two signatures and two verifications (the figure above), beside a policy round trip of about a millisecond (section `policy`). Signatures and message checks use Node's native Ed25519; a JWT's own issuer signature is checked by the nkeys library (pure JS, tens of milliseconds on a loaded machine) once per principal per process, then remembered. Measured on the shared 2-core machine under other load: the p99s are the machine's, the p50s the code's.",
].join('\n');
say(md);
writeSection(OUT, 'proof', md);
