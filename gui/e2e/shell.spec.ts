import { writeFileSync } from 'node:fs';
import { expect, test } from '@playwright/test';
import { generate, INTERVAL_MS, JOB_TIMEOUT_MS, openApp, setNumber, SHOTS, shot } from './helpers';

const TABS = ['txt2img', 'img2img', 'inpaint', 'upscale', 'blend', 'models', 'settings'];

test('loads the app from the api, shows the server version, and measures time to interactive', async ({ page, request }) => {
  const params = (await (await request.get('/api/settings/params')).json()) as { version: string; motd?: Record<string, string> };
  await page.goto('/');
  await expect(page.getByTestId('tab-txt2img')).toHaveAttribute('aria-current', 'page');
  await expect(page.getByTestId('server-version')).toHaveText(`v${params.version}`);
  if (params.motd?.en) await expect(page.getByTestId('motd')).toContainText(params.motd.en);
  await expect(page.getByTestId('generate')).toBeEnabled();

  // The app marks `app-interactive` once the controls built from /api/settings/* are on screen.
  const timing = await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0] as PerformanceNavigationTiming;
    const mark = performance.getEntriesByName('app-interactive')[0];
    return { domInteractiveMs: Math.round(nav.domInteractive), appInteractiveMs: Math.round(mark.startTime), loadEventMs: Math.round(nav.loadEventEnd) };
  });
  console.log(`time to interactive: ${timing.appInteractiveMs} ms (DOM interactive ${timing.domInteractiveMs} ms, load ${timing.loadEventMs} ms)`);
  writeFileSync(`${SHOTS}/timing.json`, JSON.stringify(timing, null, 2));
  expect(timing.appInteractiveMs).toBeGreaterThan(0);
  await shot(page, 'load');
});

test('every tab from 360 to 2560 px wide, with the tab kept in the URL', async ({ page }) => {
  for (const width of [1280, 360, 2560]) {
    await page.setViewportSize({ width, height: 900 });
    for (const tab of TABS) {
      await openApp(page, tab);
      expect(new URL(page.url()).hash).toBe(`#${tab}`);
      // Nothing may stick out sideways at any width.
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
      expect(overflow, `${tab} at ${width}px overflows by ${overflow}px`).toBeLessThanOrEqual(0);
      if (width !== 2560) await shot(page, `tab-${tab}-${width}`);
    }
  }
});

test('switches to German and stays German after a reload', async ({ page }) => {
  await openApp(page, 'settings');
  await page.getByTestId('language').selectOption('de');
  await expect(page.getByTestId('tab-settings')).toHaveText('Einstellungen');
  await expect(page.locator('html')).toHaveAttribute('lang', 'de');
  await page.reload();
  await expect(page.getByTestId('tab-txt2img')).toHaveText('Text zu Bild');
  await page.getByTestId('tab-txt2img').click();
  await expect(page.getByTestId('generate')).toHaveText('Erzeugen');
  await shot(page, 'german');
});

test('shows a clear screen when the server cannot be reached', async ({ page }) => {
  await page.goto('/?api=http://127.0.0.1:9');
  await expect(page.getByTestId('error-screen')).toContainText(/cannot be reached/i);
  await expect(page.getByRole('button', { name: 'Try again' })).toBeFocused();
  await shot(page, 'unreachable');
});

test('keyboard: the skip link and tabs are reachable with visible focus, and every control has a label', async ({ page }) => {
  await openApp(page, 'txt2img');
  await page.keyboard.press('Tab');
  await expect(page.getByText('Skip to content')).toBeFocused();
  await page.keyboard.press('Tab');
  await page.keyboard.press('Tab');
  const focused = page.locator(':focus');
  await expect(focused).toHaveAttribute('data-testid', /tab-|motd/);
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement as Element).outlineStyle);
  expect(outline).not.toBe('none');
  // Every form control has a label a screen reader can read.
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll('input, select, textarea')]
      .filter((el) => !(el as HTMLInputElement).labels?.length && !el.getAttribute('aria-label'))
      .map((el) => el.outerHTML.slice(0, 80)),
  );
  expect(unlabelled).toEqual([]);
  await shot(page, 'keyboard-focus');
});

test("models tab lists the server's models; admin calls report the server's answer", async ({ page, request }) => {
  const models = (await (await request.get('/api/settings/models')).json()) as { diffusion: string[] };
  await openApp(page, 'models', '&token=not-the-token');
  for (const name of models.diffusion) await expect(page.getByTestId('models')).toContainText(name);
  // A wrong token must be refused, and the GUI must say so rather than show nothing.
  await expect(page.getByTestId('worker-status-error')).toBeVisible();
  await shot(page, 'models-admin');
});

test('follows the OS colour scheme, and a theme picked in Settings overrides it', async ({ page }) => {
  const background = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  const isDark = (rgb: string) => (rgb.match(/\d+/g) ?? []).slice(0, 3).reduce((a, b) => a + Number(b), 0) < 3 * 80;
  await page.emulateMedia({ colorScheme: 'dark' });
  await openApp(page, 'settings');
  expect(isDark(await background())).toBe(true);
  await shot(page, 'dark');
  await page.getByTestId('theme').selectOption('light');
  expect(isDark(await background())).toBe(false);
  await page.emulateMedia({ colorScheme: 'light' });
  await page.getByTestId('theme').selectOption('dark');
  expect(isDark(await background())).toBe(true);
});

test('the Jobs view is there only where the server lists jobs, and lists a new job', async ({ page, request }) => {
  const listing = await request.get('/api/jobs?limit=1');
  if ([404, 405, 501].includes(listing.status())) {
    // An older server, or one without the listing: no tab, and its address falls back to txt2img.
    console.log(`jobs: the server answered ${listing.status()} for /api/jobs; the view is hidden`);
    await page.goto(`/?interval=${INTERVAL_MS}#jobs`);
    await expect(page.getByTestId('tab-txt2img')).toHaveAttribute('aria-current', 'page');
    await expect(page.getByTestId('tab-jobs')).toHaveCount(0);
    return;
  }
  expect(listing.status(), await listing.text()).toBe(200);
  await openApp(page, 'txt2img');
  await setNumber(page, 'width', 128);
  await setNumber(page, 'height', 128);
  await setNumber(page, 'steps', 2);
  const { name } = (await (await generate(page, 'txt2img')).json()) as { name: string };
  await page.getByTestId('tab-jobs').click();
  const row = page.locator(`[data-testid="job-row"][data-name="${name}"]`);
  await expect(row).toBeVisible();
  await expect(row).toHaveAttribute('data-status', 'success', { timeout: JOB_TIMEOUT_MS });
  await expect(row.getByTestId('job-output').first()).toHaveAttribute('href', /\/output\//);
  await shot(page, 'jobs');
});

test('API key: asked for when the server refuses one, sent with every request, a revoked one explained', async ({ page }) => {
  // The stack runs without keys; this stands in for keys mode in front of it.
  let answer: { status: number; error: string } | null = null;
  const headers: string[] = [];
  await page.route('**/api/**', async (route) => {
    const auth = route.request().headers().authorization ?? '';
    headers.push(auth);
    const refuse = auth !== 'Bearer e2e-key' ? { status: 401, error: 'an API key is required' } : answer;
    if (refuse) return route.fulfill({ status: refuse.status, contentType: 'application/json', body: JSON.stringify({ error: refuse.error }) });
    return route.continue();
  });
  await page.goto(`/?interval=${INTERVAL_MS}#txt2img`);
  await expect(page.getByTestId('error-screen')).toContainText('The server needs an API key');
  await expect(page.getByTestId('auth-error')).toContainText('an API key is required');
  await shot(page, 'api-key-needed');
  await page.getByTestId('boot-api-key').fill('e2e-key');
  await page.getByRole('button', { name: 'Save and connect' }).click();
  await expect(page.getByTestId('tab-txt2img')).toHaveAttribute('aria-current', 'page');
  expect(headers.at(-1)).toBe('Bearer e2e-key');

  answer = { status: 403, error: 'this API key was revoked' };
  await setNumber(page, 'steps', 2);
  await page.getByTestId('generate').click();
  await expect(page.getByTestId('form-error')).toContainText('this API key was revoked');
  await expect(page.getByTestId('form-error')).toContainText('Set a valid API key in Settings');
  await page.getByTestId('api-key-link').click();
  await expect(page.getByTestId('tab-settings')).toHaveAttribute('aria-current', 'page');
  await expect(page.getByTestId('api-key')).toBeFocused();
  await expect(page.getByTestId('api-key')).toHaveValue('e2e-key');
  await shot(page, 'api-key-settings');
});
