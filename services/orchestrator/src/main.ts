#!/usr/bin/env node
// Process boundary of the orchestrator: the only place that reads process.env and signals.
import { createLogger } from '@capstan/kit';
import { CapstanError } from '@capstan/schemas';
import { loadConfig } from './config.js';
import { createOrchestrator } from './app.js';

let config;
try {
  config = loadConfig(process.env);
} catch (e) {
  process.stderr.write(`${CapstanError.is(e) ? e.message : String(e)}\n`);
  process.exit(2);
}
const log = createLogger('orchestrator', config.logLevel);
const app = await createOrchestrator(config, log);
await app.start();
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    app.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        log.fatal({ err }, 'stop failed');
        process.exit(1);
      },
    );
  });
}
