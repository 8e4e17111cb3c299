/**
 * The GUI against a stack in keys mode (ONNX_WEB_AUTH=keys): scripts/gui-e2e.sh starts one after
 * the anonymous run and passes two real keys of two owners in E2E_API_KEY and E2E_OTHER_KEY.
 * Nothing here is stubbed: the 401, the key check, the event stream and the owner filter are the
 * server's own.
 */
import { expect, test } from '@playwright/test';
import { eventStreams, expectSuccess, generate, INTERVAL_MS, recordEventStreams, setNumber, shot } from './helpers';

const KEY = process.env.E2E_API_KEY ?? '';
const OTHER_KEY = process.env.E2E_OTHER_KEY ?? '';

test.skip(!KEY || !OTHER_KEY, 'needs a stack in keys mode (scripts/gui-e2e.sh runs one after the anonymous suite)');

test('keys mode: told a key is needed, then txt2img runs with it over the event stream, and the Jobs view lists it', async ({ page, playwright }) => {
  await recordEventStreams(page);
  // Every api call and output fetch the page makes, with the Authorization it carried.
  const sent: { path: string; auth: string }[] = [];
  page.on('request', (r) => {
    const path = new URL(r.url()).pathname;
    if (path.startsWith('/api/') || path.startsWith('/output/')) sent.push({ path, auth: r.headers().authorization ?? '' });
  });

  // The settings are open to all, so the app loads; the first call that needs a key says so and
  // leads to the key field.
  await page.goto(`/?interval=${INTERVAL_MS}#txt2img`);
  const alert = page.getByRole('alert');
  await expect(alert).toContainText('needs an API key');
  await shot(page, 'keys-mode-key-needed');
  await alert.getByRole('link', { name: 'Open Settings' }).click();
  await expect(page.getByTestId('tab-settings')).toHaveAttribute('aria-current', 'page');
  await page.getByTestId('api-key').fill(KEY);
  await page.getByTestId('tab-txt2img').click();
  await expect(page.getByTestId('tab-txt2img')).toHaveAttribute('aria-current', 'page');

  await page.getByTestId('prompt').fill('a harbour in keys mode');
  await setNumber(page, 'width', 128);
  await setNumber(page, 'height', 128);
  await setNumber(page, 'steps', 6);
  const response = await generate(page, 'txt2img');
  expect(response.status(), await response.text()).toBe(200);
  const { name } = (await response.json()) as { name: string };
  const card = page.locator(`[data-testid="job-card"][data-name="${name}"]`);
  await expectSuccess(card);
  await shot(page, 'keys-mode-txt2img');

  // Progress came over the event stream, which carried the success and its end.
  expect(sent.some((s) => s.path === '/api/job/events')).toBe(true);
  await expect.poll(async () => (await eventStreams(page)).join('')).toContain('event: end');
  // Every call the page made after the key was saved carried it, the stream and the image included.
  const afterKey = sent.slice(sent.findIndex((s) => s.auth !== ''));
  expect(afterKey.filter((s) => s.auth !== `Bearer ${KEY}`).map((s) => s.path)).toEqual([]);

  await page.getByTestId('tab-jobs').click();
  const row = page.locator(`[data-testid="job-row"][data-name="${name}"]`);
  await expect(row).toHaveAttribute('data-status', 'success');

  // Another owner's key sees nothing of it: not in its list, and its output is 404.
  const other = await playwright.request.newContext({
    baseURL: test.info().project.use.baseURL,
    extraHTTPHeaders: { Authorization: `Bearer ${OTHER_KEY}` },
  });
  const listed = (await (await other.get('/api/jobs?limit=100')).json()) as { jobs: { name: string }[] };
  expect(listed.jobs.map((j) => j.name)).not.toContain(name);
  const outputs = sent.filter((s) => s.path.startsWith('/output/')).map((s) => s.path);
  expect(outputs.length, "the card's image was fetched from /output/").toBeGreaterThan(0);
  expect((await other.get(outputs[0])).status()).toBe(404);
  await other.dispose();
});

test('keys mode: a request without a key, or with a made-up one, is refused with JSON', async ({ playwright }) => {
  const anonymous = await playwright.request.newContext({ baseURL: test.info().project.use.baseURL });
  const missing = await anonymous.get('/api/jobs');
  expect(missing.status()).toBe(401);
  expect(((await missing.json()) as { error: string }).error).toMatch(/key/i);
  const wrong = await anonymous.get('/api/jobs', { headers: { Authorization: 'Bearer not-a-real-key' } });
  expect([401, 403]).toContain(wrong.status());
  // The settings, probes and the API reference stay open.
  expect((await anonymous.get('/api/settings/params')).status()).toBe(200);
  expect((await anonymous.get('/api/docs')).status()).toBe(200);
  await anonymous.dispose();
});
