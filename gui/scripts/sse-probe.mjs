#!/usr/bin/env node
/**
 * The browser side of `python -m bench.events --client browser BASE_URL JOB`: headless Chromium
 * opens a page of the api, listens to the job's event stream with the browser's own EventSource,
 * and prints `open` once the stream is open, then `<step> <epoch ms>` as each running record
 * arrives in the page (the page's clock, performance.timeOrigin + now()). It closes the browser
 * when its stdin ends.
 */
import { chromium } from '@playwright/test';

const [base, job] = process.argv.slice(2);
if (!base || !job) {
  console.error('usage: sse-probe.mjs BASE_URL JOB_NAME');
  process.exit(2);
}
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium' });
const page = await browser.newPage();
await page.exposeFunction('probeReport', (line) => console.log(line));
await page.goto(new URL('/api/settings/params', base).href);
await page.evaluate((name) => {
  const report = (window).probeReport;
  const stream = new EventSource(`/api/job/events?jobs=${encodeURIComponent(name)}`);
  stream.addEventListener('open', () => report('open'));
  stream.addEventListener('status', (event) => {
    const at = performance.timeOrigin + performance.now();
    const record = JSON.parse(event.data);
    if (record.status === 'running') report(`${record.steps.current} ${at}`);
  });
}, job);
process.stdin.resume();
process.stdin.on('end', async () => {
  await browser.close();
  process.exit(0);
});
