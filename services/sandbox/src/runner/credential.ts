/**
 * `node /opt/capstan/runner/credential.js <NAME> [reason…]`: asks for a credential at run
 * time (mode 3b) and prints its value on stdout, for a tool to capture
 * (`TOKEN=$(node /opt/capstan/runner/credential.js API_TOKEN "publish the report")`).
 * Exit 0 with the value; 1 with the refusal's code and message on stderr; 2 bad usage.
 * Node builtins only: this file runs from the image.
 */
import { request } from 'node:http';

const [name, ...why] = process.argv.slice(2);
const url = process.env['CAPSTAN_CREDENTIALS_URL'];
if (!name || !url) {
  process.stderr.write(url ? 'usage: credential.js <NAME> [reason]\n' : 'no credential channel here (the step is not mode 3b)\n');
  process.exit(2);
}
const body = JSON.stringify({ name, reason: why.join(' ') });
const req = request(`${url}/credential`, { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
  let raw = '';
  res.on('data', (c: Buffer) => (raw += c.toString()));
  res.on('end', () => {
    const answer = JSON.parse(raw) as { value?: string; error?: { code: string; message: string } };
    if (res.statusCode === 200 && typeof answer.value === 'string') {
      process.stdout.write(answer.value);
      process.exit(0);
    }
    process.stderr.write(`credential ${name} refused: ${answer.error?.code ?? res.statusCode}: ${answer.error?.message ?? ''}\n`);
    process.exit(1);
  });
});
req.on('error', (e) => {
  process.stderr.write(`credential channel: ${e.message}\n`);
  process.exit(1);
});
req.end(body);
