import { defineConfig } from '@playwright/test';

/**
 * End-to-end against a running stack: scripts/gui-e2e.sh starts `onnx-web run` and sets
 * E2E_BASE_URL. Debian's Chromium is used (CHROMIUM), never a downloaded browser.
 */
export default defineConfig({
  testDir: 'e2e',
  outputDir: 'test-results/artifacts',
  // One worker: the stack has one image worker, and jobs from parallel tests would queue anyway.
  workers: 1,
  fullyParallel: false,
  retries: 0,
  timeout: 240_000,
  expect: { timeout: 15_000 },
  reporter: [['list']],
  use: {
    baseURL: process.env.E2E_BASE_URL ?? 'http://127.0.0.1:5000/',
    viewport: { width: 1280, height: 900 },
    launchOptions: { executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium' },
    screenshot: 'only-on-failure',
    trace: 'off',
  },
});
