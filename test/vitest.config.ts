import { defineConfig } from 'vitest/config';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('.', import.meta.url));

export default defineConfig({
  test: {
    root,
    // Unit tests are pure; integration tests share one private nats-server started here.
    globalSetup: ['./harness/global-setup.ts'],
    setupFiles: ['./harness/setup.ts'],
    include: ['unit/**/*.test.ts', 'int/**/*.test.ts', 'browser/**/*.browser.test.ts'],
    exclude: ['dist/**', 'node_modules/**'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Two cores: fault tests spawn processes and must not starve each other.
    fileParallelism: false,
    // The skip count is printed and checked: see harness/skip-report.ts.
    reporters: ['default', './harness/skip-report.ts'],
  },
});
