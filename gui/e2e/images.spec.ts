/**
 * The modes that take images. Their routes may answer 501 until the backend builds them: each test
 * branches on the submission's status, asserting the GUI shows the server's message for a 501 and
 * the finished image otherwise, so the same test keeps passing when the route starts working.
 */
import { expect, test } from '@playwright/test';
import { expectImageOrNotImplemented, formParts, generate, makePng, openApp, recordFormParts, setNumber, upload } from './helpers';

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

test('upscale an uploaded file', async ({ page }) => {
  await openApp(page, 'upscale');
  await upload(page, 'source-input', 'small.png', await makePng(page, 96, 96, 90));
  await page.getByTestId('section-upscale').locator('summary').click();
  await page.getByTestId('upscale-enabled').check();
  const response = await generate(page, 'upscale');
  expect(await formParts(page, '/api/upscale')).toEqual(['json', 'source']);
  await expectImageOrNotImplemented(page, response, 'upscale');
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
