/**
 * The modes that take images. Their routes may answer 501 until the backend builds them: each test
 * branches on the submission's status, asserting the GUI shows the server's message for a 501 and
 * the finished image otherwise, so the same test keeps passing when the route starts working.
 */
import { expect, test } from '@playwright/test';
import { expectImageOrNotImplemented, formJson, formParts, generate, makePng, openApp, recordFormParts, setNumber, upload } from './helpers';

test.beforeEach(async ({ page }) => {
  await recordFormParts(page);
});

test('img2img with an uploaded file', async ({ page }) => {
  await openApp(page, 'img2img');
  await upload(page, 'source-input', 'source.png', await makePng(page, 192, 128, 200));
  await expect(page.getByTestId('output-size')).toContainText('192 × 128');
  await setNumber(page, 'steps', 10);
  const response = await generate(page, 'img2img');
  expect(await formParts(page, '/api/img2img')).toEqual(['json', 'source']);
  await expectImageOrNotImplemented(page, response, 'img2img');
});

test('inpaint with a mask painted on the canvas', async ({ page }) => {
  await openApp(page, 'inpaint');
  await upload(page, 'source-input', 'source.png', await makePng(page, 256, 192, 30));
  const canvas = page.getByTestId('mask-canvas');
  await expect(canvas).toBeVisible();
  // The canvas keeps the source's aspect ratio.
  const box = await canvas.boundingBox();
  expect(Math.abs((box?.width ?? 0) / (box?.height ?? 1) - 256 / 192)).toBeLessThan(0.02);
  await page.mouse.move((box?.x ?? 0) + 40, (box?.y ?? 0) + 40);
  await page.mouse.down();
  await page.mouse.move((box?.x ?? 0) + (box?.width ?? 0) / 2, (box?.y ?? 0) + (box?.height ?? 0) / 2, { steps: 8 });
  await page.mouse.up();
  const white = await canvas.evaluate((c: HTMLCanvasElement) => {
    const d = (c.getContext('2d') as CanvasRenderingContext2D).getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] > 200) n++;
    return n / (c.width * c.height);
  });
  expect(white).toBeGreaterThan(0.01);
  expect(white).toBeLessThan(0.9);
  await expect(page.getByTestId('generate')).toBeEnabled();
  await setNumber(page, 'steps', 10);
  const response = await generate(page, 'inpaint');
  expect(await formParts(page, '/api/inpaint')).toEqual(['json', 'mask', 'source']);
  await expectImageOrNotImplemented(page, response, 'inpaint');
});

test('inpaint with an uploaded mask: shown in the canvas and sent as the mask part', async ({ page }) => {
  await openApp(page, 'inpaint');
  await upload(page, 'source-input', 'source.png', await makePng(page, 256, 192, 30));
  // A mask made elsewhere, at twice the source's size: a white disc on a dark gradient.
  const mask = await makePng(page, 512, 384, 0);
  await page.getByTestId('mask-upload').locator('input[type=file]').setInputFiles({ name: 'mask.png', mimeType: 'image/png', buffer: mask });
  await expect(page.getByTestId('mask-upload-note')).toContainText('Mask loaded from mask.png');
  const canvas = page.getByTestId('mask-canvas');
  const [centre, corner] = await canvas.evaluate((c: HTMLCanvasElement) => {
    const ctx = c.getContext('2d') as CanvasRenderingContext2D;
    const at = (x: number, y: number) => [...ctx.getImageData(x, y, 1, 1).data];
    return [at(c.width / 2, c.height / 2), at(2, 2)];
  });
  // Scaled to the source and made grey: the disc is white, the rest darker, everything opaque.
  expect(centre).toEqual([255, 255, 255, 255]);
  expect(corner[0]).toBeLessThan(255);
  expect(corner[0]).toBe(corner[1]);
  expect(corner[3]).toBe(255);
  await setNumber(page, 'steps', 10);
  const response = await generate(page, 'inpaint');
  expect(await formParts(page, '/api/inpaint')).toEqual(['json', 'mask', 'source']);
  await expectImageOrNotImplemented(page, response, 'inpaint-uploaded-mask');
});

test('upscale an uploaded file with the defaults, at one press of Upscale', async ({ page }) => {
  await openApp(page, 'upscale');
  await upload(page, 'source-input', 'small.png', await makePng(page, 96, 96, 90));
  // Nothing to open or tick: the settings are on screen and upscaling is on.
  await expect(page.getByTestId('upscale-enabled')).toBeVisible();
  await expect(page.getByTestId('upscale-enabled')).toBeChecked();
  await expect(page.getByTestId('generate')).toHaveText('Upscale');
  const response = await generate(page, 'upscale');
  expect(await formParts(page, '/api/upscale')).toEqual(['json', 'source']);
  expect(await formJson(page, '/api/upscale')).toMatchObject({ upscale: { enabled: true } });
  const card = await expectImageOrNotImplemented(page, response, 'upscale');
  if (card) {
    // The full-size output, in the viewer, is bigger than the source.
    await card.getByRole('button', { name: 'Show full size' }).click();
    const full = page.getByTestId('lightbox-image');
    await expect.poll(() => full.evaluate((img: HTMLImageElement) => img.naturalWidth), { timeout: 30_000 }).toBeGreaterThan(96);
  }
});

test('blend two uploads through a painted mask', async ({ page }) => {
  await openApp(page, 'blend');
  await upload(page, 'blend-input-0', 'a.png', await makePng(page, 128, 128, 0));
  await upload(page, 'blend-input-1', 'b.png', await makePng(page, 128, 128, 240));
  await page.getByTestId('mask-fill-white').click();
  await expect(page.getByTestId('generate')).toBeEnabled();
  const response = await generate(page, 'blend');
  expect(await formParts(page, '/api/blend')).toEqual(['json', 'mask', 'source:0', 'source:1']);
  await expectImageOrNotImplemented(page, response, 'blend');
});

test('a GIF the browser can show but the server refuses is turned down in the slot, and nothing is sent', async ({ page }) => {
  await openApp(page, 'img2img');
  let sent = 0;
  page.on('request', (r) => {
    if (new URL(r.url()).pathname === '/api/img2img') sent += 1;
  });
  // A 1 × 1 GIF: Chromium decodes it, the server takes only PNG, JPEG and WebP.
  const gif = Buffer.from('R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==', 'base64');
  const slot = page.getByTestId('source-input');
  await slot.locator('input[type=file]').setInputFiles({ name: 'pixel.gif', mimeType: 'image/gif', buffer: gif });
  await expect(slot.getByRole('alert')).toContainText('pixel.gif is not a PNG, JPEG or WebP image');
  await expect(page.getByTestId('missing-images')).toBeVisible();
  await expect(page.getByTestId('generate')).toBeDisabled();
  expect(sent).toBe(0);

  // A PNG afterwards is taken, and the message goes.
  await upload(page, 'source-input', 'source.png', await makePng(page, 64, 64, 90));
  await expect(slot.getByRole('alert')).toHaveCount(0);
});

test('an image past the server\'s published limits is turned down in the slot, and nothing is sent', async ({ page }) => {
  await openApp(page, 'img2img');
  const limits = await (await page.request.get('/api/settings/limits')).json();
  let sent = 0;
  page.on('request', (r) => {
    if (new URL(r.url()).pathname === '/api/img2img') sent += 1;
  });
  // One pixel longer than the server takes on a side: a thin strip, small in bytes.
  const slot = page.getByTestId('source-input');
  await slot.locator('input[type=file]').setInputFiles({
    name: 'strip.png',
    mimeType: 'image/png',
    buffer: await makePng(page, limits.maxImageSide + 1, 8, 30),
  });
  await expect(slot.getByRole('alert')).toContainText(`strip.png is ${(limits.maxImageSide + 1).toLocaleString('en')} pixels on its longer side`);
  await expect(page.getByTestId('generate')).toBeDisabled();
  expect(sent).toBe(0);
});
