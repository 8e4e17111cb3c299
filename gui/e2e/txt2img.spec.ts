import { expect, test } from '@playwright/test';
import { cardStates, expectSuccess, generate, JOB_TIMEOUT_MS, openApp, recordCardStates, setNumber, shot } from './helpers';

test.beforeEach(async ({ page }) => {
  await recordCardStates(page);
});

test('txt2img: the card goes pending → running → image, with download links that work', async ({ page, request }) => {
  await openApp(page, 'txt2img');
  await page.getByTestId('prompt').fill('a lighthouse at dusk');
  // Small and short, but enough steps that a poll (every 250 ms) lands while it runs.
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

  const image = await card.getByTestId('download-image').getAttribute('href');
  const metadata = await card.getByTestId('download-metadata').getAttribute('href');
  expect((await request.get(image as string)).headers()['content-type']).toMatch(/^image\//);
  const meta = (await (await request.get(metadata as string)).json()) as { params: { steps: number } };
  expect(meta.params.steps).toBe(20);
  await shot(page, 'txt2img');

  await card.getByRole('button', { name: 'Show full size' }).click();
  await expect(page.getByTestId('lightbox')).toBeVisible();
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

test('a job that fails shows its reason, and Retry sends it again', async ({ page }) => {
  await openApp(page, 'txt2img');
  const models = await page.getByTestId('model').locator('option').evaluateAll((options) => options.map((o) => (o as HTMLOptionElement).value));
  const inpainting = models.find((m) => /inpaint/.test(m));
  test.skip(inpainting === undefined, 'no inpainting model on this server to fail txt2img with');
  // An inpainting UNet takes extra input channels, so txt2img with it fails in the worker.
  await page.getByTestId('model').selectOption(inpainting as string);
  await setNumber(page, 'width', 128);
  await setNumber(page, 'height', 128);
  await setNumber(page, 'steps', 2);
  const { name } = (await (await generate(page, 'txt2img')).json()) as { name: string };
  const card = page.locator(`[data-testid="job-card"][data-name="${name}"]`);
  await expect(card).toHaveAttribute('data-status', 'failed', { timeout: JOB_TIMEOUT_MS });
  await expect(card.getByTestId('failure-reason')).toContainText(/Reason: |no reason/);
  await shot(page, 'failed');
  const [retry] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === '/api/txt2img' && r.request().method() === 'POST'),
    card.getByTestId('retry').click(),
  ]);
  const { name: retried } = (await retry.json()) as { name: string };
  expect(retried).not.toBe(name);
  await expect(page.locator(`[data-testid="job-card"][data-name="${retried}"]`)).toBeVisible();
  await expect(card).toHaveCount(0);
});
