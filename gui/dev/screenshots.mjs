#!/usr/bin/env node
/**
 * Screenshot every tab at 1280 and 360 px wide, to look at the layout:
 *   node dev/screenshots.mjs http://127.0.0.1:5000/ [out-dir]
 * Uses Debian's Chromium (CHROMIUM, default /usr/bin/chromium) through playwright-core.
 */
import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

const base = process.argv[2] ?? 'http://127.0.0.1:5000/';
const out = process.argv[3] ?? 'test-results/screens';
const tabs = ['txt2img', 'img2img', 'inpaint', 'upscale', 'blend', 'jobs', 'models', 'settings'];
mkdirSync(out, { recursive: true });
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium' });
for (const width of [1280, 360]) {
  for (const scheme of process.env.SCHEMES?.split(',') ?? ['light']) {
    const page = await browser.newPage({ viewport: { width, height: 900 }, colorScheme: scheme });
    for (const tab of tabs) {
      await page.goto(`${base}#${tab}`);
      await page.waitForSelector('nav.tabs');
      await page.waitForTimeout(200);
      await page.screenshot({ path: `${out}/${tab}-${width}-${scheme}.png`, fullPage: true });
    }
    await page.close();
  }
}
await browser.close();
console.log(`screenshots in ${out}`);
