import { defineConfig } from 'vitest/config';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('.', import.meta.url));

/**
 * Three lanes (`--project unit|int|browser`; `npm test` runs all three):
 * - unit: pure tests, no server of any kind (no nats-server, Postgres, Docker or Chromium),
 *   so `npm run test:unit` runs anywhere Node does, in seconds.
 * - int: real servers; one private nats-server started by harness/global-setup.ts is shared
 *   by every file of the lane, Postgres and Docker as the tests need them.
 * - browser: real Chromium against a real stack (same nats-server set-up as int).
 * `npm test` runs the lanes one after another (vitest would run projects side by side, and
 * the fault tests of one lane must not share two cores with another lane's servers).
 */
const shared = {
  root,
  exclude: ['dist/**', 'node_modules/**'],
  testTimeout: 60_000,
  hookTimeout: 60_000,
  // Two cores: fault tests spawn processes and must not starve each other.
  fileParallelism: false,
} as const;

const withServer = {
  ...shared,
  globalSetup: ['./harness/global-setup.ts'],
  setupFiles: ['./harness/setup.ts'],
} as const;

export default defineConfig({
  test: {
    root,
    // The skip count is printed and checked: see harness/skip-report.ts.
    reporters: ['default', './harness/skip-report.ts'],
    projects: [
      { test: { ...shared, name: 'unit', include: ['unit/**/*.test.ts'] } },
      { test: { ...withServer, name: 'int', include: ['int/**/*.test.ts'] } },
      { test: { ...withServer, name: 'browser', include: ['browser/**/*.browser.test.ts'] } },
    ],
  },
});
