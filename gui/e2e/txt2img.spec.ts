import { expect, test } from '@playwright/test';
import { type SseEvent, SseParser } from '../src/client/sse';
import {
  cardStates,
  eventStreams,
  expectSuccess,
  formJson,
  generate,
  JOB_TIMEOUT_MS,
  openApp,
  recordCardStates,
  recordEventStreams,
  recordFormParts,
  setNumber,
  shot,
} from './helpers';

test.beforeEach(async ({ page }) => {
  await recordCardStates(page);
});

test('txt2img: the card goes pending → running → image, pushed by the event stream, with download links that work', async ({ page, request }) => {
  // Which jobs the page asked about, and how: the event stream or a status poll.
  await recordEventStreams(page);
  const streamed: string[] = [];
  const polled: string[] = [];
  page.on('request', (r) => {
    const url = new URL(r.url());
    const jobs = url.searchParams.get('jobs')?.split(',') ?? [];
    if (url.pathname === '/api/job/events') streamed.push(...jobs);
    if (url.pathname === '/api/job/status') polled.push(...jobs);
  });
  await openApp(page, 'txt2img');
  await page.getByTestId('prompt').fill('a lighthouse at dusk');
  // Small and short, but enough steps that the card is seen running.
  await setNumber(page, 'width', 256);
  await setNumber(page, 'height', 256);
  await setNumber(page, 'steps', 20);
  const response = await generate(page, 'txt2img');
  expect(response.status(), await response.text()).toBe(200);
  const submitted = (await response.json()) as { name: string; status: string; queue: { current: number } };
  expect(submitted.status).toBe('pending');
  const card = page.locator(`[data-testid="job-card"][data-name="${submitted.name}"]`);
  await expect(card).toBeVisible();
  await expectSuccess(card);
  expect(await cardStates(page, submitted.name)).toEqual(['pending', 'running', 'success']);
  await expect(card).toContainText('a lighthouse at dusk');

  // The progress came by the event stream: it carried the job's running records, its success and
  // `end`; a poll round may have started before the stream's first record, none after.
  expect(streamed).toContain(submitted.name);
  await expect.poll(async () => (await eventStreams(page)).join('')).toContain('event: end');
  const events: SseEvent[] = [];
  for (const text of await eventStreams(page)) new SseParser({ onEvent: (e) => events.push(e) }).push(text);
  const records = events
    .filter((e) => e.type === 'status')
    .map((e) => JSON.parse(e.data) as { name: string; status: string })
    .filter((r) => r.name === submitted.name);
  expect(records.filter((r) => r.status === 'running').length).toBeGreaterThan(1);
  expect(records.at(-1)?.status).toBe('success');
  expect(events.at(-1)?.type).toBe('end');
  expect(polled.filter((name) => name === submitted.name).length).toBeLessThanOrEqual(1);

  const image = await card.getByTestId('download-image').getAttribute('href');
  const metadata = await card.getByTestId('download-metadata').getAttribute('href');
  expect((await request.get(image as string)).headers()['content-type']).toMatch(/^image\//);
  const meta = (await (await request.get(metadata as string)).json()) as { params: { steps: number } };
  expect(meta.params.steps).toBe(20);
  await shot(page, 'txt2img');

  await card.getByRole('button', { name: 'Show full size' }).click();
  await expect(page.getByTestId('lightbox')).toBeVisible();
  await expect(page.getByTestId('lightbox-download')).toHaveAttribute('href', image as string);
  await expect(page.getByTestId('lightbox-count')).toHaveText('1 of 1');
  await page.keyboard.press('Escape');
  await expect(page.getByTestId('lightbox')).toHaveCount(0);

  // Copy to img2img: the output becomes that tab's source, at its real size.
  await card.getByTestId('copy-to').selectOption({ label: 'img2img' });
  await expect(page.getByTestId('tab-img2img')).toHaveAttribute('aria-current', 'page');
  await expect(page.getByTestId('source-input')).toContainText('256 × 256');
  await expect(page.getByTestId('generate')).toBeEnabled();
});

test('history survives a reload (on a 360 px phone screen)', async ({ page }) => {
  await page.setViewportSize({ width: 360, height: 760 });
  await openApp(page, 'txt2img');
  await setNumber(page, 'width', 128);
  await setNumber(page, 'height', 128);
  await setNumber(page, 'steps', 3);
  const { name } = (await (await generate(page, 'txt2img')).json()) as { name: string };
  const card = page.locator(`[data-testid="job-card"][data-name="${name}"]`);
  await expectSuccess(card);
  await page.reload();
  await expectSuccess(page.locator(`[data-testid="job-card"][data-name="${name}"]`));
  await shot(page, 'history-after-reload');
});

test("parameters load back from an output's own file", async ({ page, request }) => {
  await openApp(page, 'txt2img');
  await setNumber(page, 'width', 128);
  await setNumber(page, 'height', 128);
  await setNumber(page, 'steps', 3);
  await page.getByTestId('prompt').fill('a red kite over the sea');
  const { name } = (await (await generate(page, 'txt2img')).json()) as { name: string };
  const card = page.locator(`[data-testid="job-card"][data-name="${name}"]`);
  await expectSuccess(card);
  const png = await (await request.get((await card.getByTestId('download-image').getAttribute('href')) as string)).body();

  await page.getByTestId('prompt').fill('something else');
  await setNumber(page, 'steps', 9);
  await page.getByTestId('profile-import').setInputFiles({ name: 'output.png', mimeType: 'image/png', buffer: png });
  await expect(page.getByTestId('notices')).toContainText('Parameters loaded from output.png');
  await expect(page.getByTestId('prompt')).toHaveValue('a red kite over the sea');
  await expect(page.getByTestId('steps').locator('input[type=number]')).toHaveValue('3');
  await shot(page, 'params-from-file');
});

test('cancel a long job: the card ends cancelled and the server agrees', async ({ page, request }) => {
  await openApp(page, 'txt2img');
  await setNumber(page, 'width', 256);
  await setNumber(page, 'height', 256);
  await setNumber(page, 'steps', 150);
  const { name } = (await (await generate(page, 'txt2img')).json()) as { name: string };
  const card = page.locator(`[data-testid="job-card"][data-name="${name}"]`);
  await expect(card).toHaveAttribute('data-status', 'running', { timeout: JOB_TIMEOUT_MS });
  // steps.total also counts the saving of the output: progress is a share, never "of 151".
  await expect(card.getByTestId('progress-text')).toContainText(/\d+% done/);
  await expect(card.getByTestId('progress-text')).not.toContainText(/of 151|Step/);
  // A live preview of the latents, decoded by the demo TAESD, shows up while it runs.
  await expect(card.getByTestId('card-preview')).toBeVisible({ timeout: 30_000 });
  await expect(card.getByTestId('card-preview')).toHaveAttribute('src', /^blob:/);
  await shot(page, 'preview');
  const [cancel] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === '/api/job/cancel'),
    card.getByTestId('cancel').click(),
  ]);
  expect(cancel.status()).toBe(200);
  // Our server answers each job's true state: a running job stays `running` until its worker
  // stops at the next step, then ends `cancelled`.
  const [answer] = (await cancel.json()) as Array<{ name: string; status: string }>;
  expect(answer.name).toBe(name);
  expect(['cancelled', 'running']).toContain(answer.status);
  await expect(card).toHaveAttribute('data-status', 'cancelled');
  await expect(card.getByTestId('retry')).toBeEnabled();
  const [record] = (await (await request.get(`/api/job/status?jobs=${name}`)).json()) as Array<{ status: string }>;
  expect(record.status).toBe('cancelled');
  await shot(page, 'cancel');
});

test('grid mode: a 2×1 grid sent as a chain to /api/job', async ({ page }) => {
  await openApp(page, 'txt2img');
  await setNumber(page, 'width', 128);
  await setNumber(page, 'height', 128);
  await setNumber(page, 'steps', 3);
  await page.getByTestId('section-grid').locator('summary').click();
  await page.getByTestId('grid-enabled').check();
  await page.getByTestId('grid-columns-parameter').selectOption('seed');
  await page.getByTestId('grid-columns-values').fill('1, 2');
  const [response] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === '/api/job'),
    page.getByTestId('generate').click(),
  ]);
  const sent = response.request().postDataJSON() as { stages: Array<{ type: string; params: { seed?: number } }> };
  expect(sent.stages.map((s) => s.type)).toEqual(['source-txt2img', 'source-txt2img', 'blend-grid', 'persist-disk']);
  expect(sent.stages.slice(0, 2).map((s) => s.params.seed)).toEqual([1, 2]);
  if (response.status() === 501) {
    // Chains not built on the server yet: the GUI must say so next to the form.
    const { error } = (await response.json()) as { error: string };
    await expect(page.getByTestId('form-error')).toContainText(error);
    await shot(page, 'grid');
    return;
  }
  expect(response.status(), await response.text()).toBe(200);
  const { name } = (await response.json()) as { name: string };
  const card = page.locator(`[data-testid="job-card"][data-name="${name}"]`);
  await expectSuccess(card);
  // The outputs are the two cells and then the grid; the card opens on the grid, 2 cells wide.
  await expect(card.getByText('3 of 3')).toBeVisible();
  const size = await card.getByTestId('card-image').evaluate((img: HTMLImageElement) => [img.naturalWidth, img.naturalHeight]);
  expect(size[0]).toBe(size[1] * 2);
  await shot(page, 'grid');
});

test("bad input: the server's 400 `field: rule` message is shown next to the form", async ({ page }) => {
  await openApp(page, 'txt2img');
  // Grid values are free text, so this is how a user can send what the server must refuse.
  await page.getByTestId('section-grid').locator('summary').click();
  await page.getByTestId('grid-enabled').check();
  await page.getByTestId('grid-columns-parameter').selectOption('steps');
  await page.getByTestId('grid-columns-values').fill('0, 1');
  const [response] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === '/api/job'),
    page.getByTestId('generate').click(),
  ]);
  expect(response.status()).toBe(400);
  const { error } = (await response.json()) as { error: string };
  expect(error).toMatch(/^[\w.[\]]+: /);
  await expect(page.getByTestId('form-error')).toContainText(error);
  await expect(page.getByTestId('form-error')).toContainText('The server refused the request');
  await expect(page.getByTestId('job-card')).toHaveCount(0);
  await shot(page, 'bad-input');
});

test("a width off the server's step is corrected in the box and sent as shown, even when Enter submits at once", async ({ page }) => {
  await recordFormParts(page);
  await openApp(page, 'txt2img');
  await setNumber(page, 'steps', 2);
  const width = page.getByTestId('width').locator('input[type=number]');
  await width.fill('513');
  const [response] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === '/api/txt2img' && r.request().method() === 'POST'),
    width.press('Enter'),
  ]);
  // 513 is not a multiple of 8: the server would answer 400 `width: must be a multiple of 8`.
  expect(response.status(), await response.text()).toBe(200);
  await expect(width).toHaveValue('512');
  await expect(page.getByTestId('output-size')).toContainText('512 × 512');
  expect(await formJson(page, '/api/txt2img')).toMatchObject({ params: { width: 512 } });
  await expect(page.getByTestId('form-error')).toHaveCount(0);
});

test('an outage answering status with 503 is said in a banner that goes once the server answers again', async ({ page }) => {
  await openApp(page, 'txt2img');
  await setNumber(page, 'steps', 60);
  const response = await generate(page, 'txt2img');
  expect(response.status()).toBe(200);
  const { name } = (await response.json()) as { name: string };
  const outage = (route: import('@playwright/test').Route) =>
    route.fulfill({
      status: 503,
      headers: { 'Retry-After': '5', 'Content-Type': 'application/json' },
      body: JSON.stringify({ error: 'the database is unavailable; try again shortly' }),
    });
  await page.route(/\/api\/job\/(status|events)/, outage);
  await page.reload();
  await expect(page.getByTestId('unavailable-banner')).toContainText('503: the database is unavailable; try again shortly');
  await expect(page.getByTestId('offline')).toHaveCount(0);
  await shot(page, 'outage-503');
  await page.unroute(/\/api\/job\/(status|events)/, outage);
  await expect(page.getByTestId('unavailable-banner')).toHaveCount(0);
  const card = page.locator(`[data-testid="job-card"][data-name="${name}"]`);
  await card.getByTestId('cancel').click();
  await expect(card).toHaveAttribute('data-status', /cancelled|success/, { timeout: JOB_TIMEOUT_MS });
});

test('a model txt2img cannot run is refused at submit, with the server\'s reason next to the form', async ({ page }) => {
  await openApp(page, 'txt2img');
  const models = await page.getByTestId('model').locator('option').evaluateAll((options) => options.map((o) => (o as HTMLOptionElement).value));
  const inpainting = models.find((m) => /inpaint/.test(m));
  test.skip(inpainting === undefined, 'no inpainting model on this server');
  // An inpainting UNet takes a mask txt2img cannot give it: the server says so before any job exists.
  await page.getByTestId('model').selectOption(inpainting as string);
  await setNumber(page, 'width', 128);
  await setNumber(page, 'height', 128);
  const response = await generate(page, 'txt2img');
  expect(response.status()).toBe(400);
  const { error } = (await response.json()) as { error: string };
  expect(error).toContain('is an inpainting model');
  await expect(page.getByTestId('form-error')).toContainText(error);
  await expect(page.getByTestId('job-card')).toHaveCount(0);
  await shot(page, 'refused-model');
});

test('the viewer steps through the images, Use parameters brings back the seed, Clear history asks first', async ({ page }) => {
  await openApp(page, 'txt2img');
  await setNumber(page, 'width', 128);
  await setNumber(page, 'height', 128);
  await setNumber(page, 'steps', 3);
  await setNumber(page, 'seed', -1);
  await page.getByTestId('prompt').fill('two paper boats');
  await setNumber(page, 'batch', 2);
  const { name } = (await (await generate(page, 'txt2img')).json()) as { name: string };
  const card = page.locator(`[data-testid="job-card"][data-name="${name}"]`);
  await expectSuccess(card);
  const status = (await (await page.request.get(`/api/job/status?jobs=${name}`)).json()) as Array<{
    outputs: string[];
    metadata: Array<{ params: { seed: number } }>;
  }>;
  const { outputs, metadata } = status[0];
  expect(outputs).toHaveLength(2);

  await card.getByRole('button', { name: 'Show full size' }).click();
  const viewer = page.getByTestId('lightbox');
  await expect(viewer).toBeVisible();
  await expect(page.getByTestId('lightbox-count')).toHaveText('1 of 2');
  await expect(page.getByTestId('lightbox-image')).toHaveAttribute('src', new RegExp(`${outputs[0]}$`));
  await page.getByTestId('lightbox-next').click();
  await expect(page.getByTestId('lightbox-count')).toHaveText('2 of 2');
  await expect(page.getByTestId('lightbox-download')).toHaveAttribute('href', new RegExp(`${outputs[1]}$`));
  await expect(page.getByTestId('lightbox-download')).toHaveAttribute('download', outputs[1]);
  await page.keyboard.press('ArrowLeft');
  await expect(page.getByTestId('lightbox-count')).toHaveText('1 of 2');
  await shot(page, 'viewer');
  await page.getByTestId('lightbox-close').click();
  await expect(viewer).toHaveCount(0);

  // Sent with -1 (random); Use parameters sets the seed the image was really made with.
  await card.getByTestId('load-params').click();
  await expect(page.getByTestId('seed').locator('input[type=number]')).toHaveValue(String(metadata[0].params.seed));

  await page.getByTestId('clear-history').click();
  await expect(page.getByTestId('clear-confirm')).toBeVisible();
  await expect(card).toBeVisible();
  await shot(page, 'clear-history-confirm');
  await page.getByRole('button', { name: 'Cancel', exact: true }).click();
  await expect(card).toBeVisible();
  await page.getByTestId('clear-history').click();
  await page.getByTestId('clear-history-confirm').click();
  await expect(page.getByTestId('job-card')).toHaveCount(0);
});
