#!/usr/bin/env node
// Process boundary of the console.
//   capstan-console                  serve (config from the environment; see docs/console.md)
//   capstan-console hash-password    read a password on stdin, print its scrypt hash for CONSOLE_USERS
//   capstan-console new-token <name> [days]
//                                    a new API token (default 90 days), and the entry for the user's
//                                    `tokens` in CONSOLE_USERS (its hash, never the token)
import { Role } from '@capstan/schemas';
import { openDatabase, runService, serviceAccess, type Logger } from '@capstan/kit';
import { createConsole } from './app.js';
import { loadConfig, type Config } from './config.js';
import { hashPassword } from './users.js';
import { newApiToken } from './tokens.js';

async function serve(config: Config, log: Logger): Promise<{ start(): Promise<void>; stop(): Promise<void> }> {
  const db = await openDatabase({ url: config.databaseUrl as string, log });
  const access = await serviceAccess(Role.Console, config, 'capstan-console', log);
  const app = createConsole({ db, access, config, log });
  return {
    start: () => app.start(),
    async stop() {
      await app.stop();
      await access.close();
      await db.close();
    },
  };
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks)
    .toString('utf8')
    .replace(/\r?\n$/, '');
}

if (process.argv[2] === 'hash-password') {
  const password = await readStdin();
  if (password.length < 12) {
    process.stderr.write('hash-password: give a password of at least 12 characters on stdin\n');
    process.exit(2);
  }
  process.stdout.write(`${await hashPassword(password)}\n`);
} else if (process.argv[2] === 'new-token') {
  const [name, days = '90', ...extra] = process.argv.slice(3);
  if (!name || !/^[a-z0-9][a-z0-9._-]{0,63}$/.test(name) || !/^\d{1,4}$/.test(days) || Number(days) < 1 || extra.length > 0) {
    process.stderr.write('new-token: usage: capstan-console new-token <name> [days]; name: lowercase letters, digits, . _ -; days: 1 to 9999 (default 90)\n');
    process.exit(2);
  }
  const { token, sha256 } = newApiToken();
  const entry = { name, sha256, expiresAt: new Date(Date.now() + Number(days) * 86_400_000).toISOString() };
  // The token is shown here once; the users file keeps the entry (its hash) only.
  process.stdout.write(`${JSON.stringify({ token, entry })}\n`);
} else if (process.argv.length > 2) {
  process.stderr.write(`capstan-console: unknown command ${JSON.stringify(process.argv[2])}; commands: (none) to serve, hash-password, new-token\n`);
  process.exit(2);
} else {
  await runService('console', (env) => loadConfig(env), serve);
}
