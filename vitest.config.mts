import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    // chDB is one engine per process: every test file runs in its own process.
    isolate: true,
    // generous: tests that start several real processes one after another run on loaded 2-core machines
    testTimeout: 180_000,
    hookTimeout: 120_000,
    maxWorkers: 2,
    reporters: ['default'],
  },
});
