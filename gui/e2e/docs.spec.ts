import { expect, test } from '@playwright/test';
import { shot } from './helpers';

test('the API reference at /api/docs renders this server\'s document from the bundled viewer, with no CDN and no policy violations', async ({ page }) => {
  const problems: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(m.text());
  });
  page.on('pageerror', (e) => problems.push(e.message));
  const hosts = new Set<string>();
  page.on('request', (r) => hosts.add(new URL(r.url()).host));

  await page.goto('/api/docs');
  // Swagger UI lists each operation by method and path; these come from /api/openapi.json.
  await expect(page.locator('.opblock-summary-path', { hasText: '/api/txt2img' }).first()).toBeVisible({ timeout: 30_000 });
  await expect(page.locator('.opblock-summary-path', { hasText: '/api/job/status' }).first()).toBeVisible();
  await expect(page.locator('.title')).toContainText('onnx-web');
  await shot(page, 'api-docs');

  expect([...hosts]).toEqual([new URL(page.url()).host]);
  expect(problems).toEqual([]);
});
