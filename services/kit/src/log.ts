/**
 * The root logger. One per process; services derive children with fixed binding keys
 * (`service`, `tenant`, `runId`, `step`), never keys taken from payloads. Secret-bearing
 * paths are redacted so a careless log call cannot leak them. A line written inside a span
 * carries its `traceId` and `spanId` (with tracing on; see tracing.ts).
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';
import { traceLogFields } from './tracing.js';

export type { Logger };

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export function createLogger(service: string, level: LevelWithSilent = 'info', destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: { service },
      redact: { paths: ['*.secret', '*.secrets', '*.token', '*.password', '*.value', 'lease.*', 'env'], censor: '[redacted]' },
      serializers: { err: pino.stdSerializers.err },
      mixin: traceLogFields,
    },
    destination ?? pino.destination({ fd: 1, sync: false }),
  );
}
