import { defineConfig } from 'vitest/config';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('.', import.meta.url));

/**
 * Records run histories (test/record): not part of `npm test`. The histories it writes are
 * committed and replayed by the unit lane.
 */
export default defineConfig({
  test: {
    root,
    globalSetup: ['./harness/global-setup.ts'],
    setupFiles: ['./harness/setup.ts'],
    include: ['record/**/*.record.ts'],
    exclude: ['dist/**', 'node_modules/**'],
    testTimeout: 600_000,
    hookTimeout: 300_000,
    fileParallelism: false,
  },
});
