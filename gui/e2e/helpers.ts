/** Helpers shared by the end-to-end flows. */
import { mkdirSync } from 'node:fs';
import { expect, type Locator, type Page, type Response } from '@playwright/test';

export const SHOTS = 'test-results';
/** Fast polling so short jobs are seen while running; the contract default (5 s) would skip past them. */
export const INTERVAL_MS = 250;
/** A job on the demo models, including a cold model load on the worker. */
export const JOB_TIMEOUT_MS = 180_000;

export async function shot(page: Page, name: string): Promise<void> {
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

/**
 * Record every status each card shows, from the first render, in `window.__cardStates`
 * (name → statuses in order), so a fast pending → running → success is not missed between checks.
 */
export async function recordCardStates(page: Page): Promise<void> {
  await page.addInitScript(() => {
    const states: Record<string, string[]> = {};
    (window as unknown as { __cardStates: typeof states }).__cardStates = states;
    const note = (el: Element) => {
      const name = el.getAttribute('data-name');
      const status = el.getAttribute('data-status');
      if (!name || !status) return;
      const list = (states[name] ??= []);
      if (list[list.length - 1] !== status) list.push(status);
    };
    new MutationObserver((records) => {
      for (const r of records) {
        if (r.type === 'attributes') note(r.target as Element);
        for (const n of r.addedNodes) {
          if (n instanceof Element) n.querySelectorAll('[data-testid="job-card"]').forEach(note);
          if (n instanceof Element && n.matches('[data-testid="job-card"]')) note(n);
        }
      }
    }).observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-status'] });
  });
}

export async function cardStates(page: Page, name: string): Promise<string[]> {
  return page.evaluate((n) => (window as unknown as { __cardStates: Record<string, string[]> }).__cardStates[n] ?? [], name);
}

/**
 * Record the part names and the `json` document of every multipart body the page sends
 * (`window.__formParts`, `window.__formJson`, by path): the browser does not expose a multipart
 * body with file parts to the test runner.
 */
export async function recordFormParts(page: Page): Promise<void> {
  await page.addInitScript(() => {
    const parts: Record<string, string[]> = {};
    const json: Record<string, string> = {};
    Object.assign(window, { __formParts: parts, __formJson: json });
    const original = window.fetch.bind(window);
    window.fetch = (input, init) => {
      if (init?.body instanceof FormData) {
        const path = new URL(String(input), location.href).pathname;
        parts[path] = [...init.body.keys()].sort();
        json[path] = String(init.body.get('json') ?? '');
      }
      return original(input, init);
    };
  });
}

/**
 * Keep a copy of every event stream the page reads (`window.__eventStreams`, one text per stream):
 * the browser does not hand a streamed body to the test runner once the page has let it go.
 */
export async function recordEventStreams(page: Page): Promise<void> {
  await page.addInitScript(() => {
    const streams: string[] = [];
    Object.assign(window, { __eventStreams: streams });
    const original = window.fetch.bind(window);
    window.fetch = async (input, init) => {
      const res = await original(input, init);
      const path = new URL(input instanceof Request ? input.url : String(input), location.href).pathname;
      if (path !== '/api/job/events' || !res.ok || !res.body) return res;
      // Two branches of one body: the page reads one, this copy the other, to the stream's end.
      const [forPage, copy] = res.body.tee();
      const index = streams.push('') - 1;
      void (async () => {
        const reader = copy.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          const chunk = await reader.read().catch(() => ({ done: true as const, value: undefined }));
          if (chunk.done) break;
          streams[index] += decoder.decode(chunk.value, { stream: true });
        }
      })();
      return new Response(forPage, { status: res.status, statusText: res.statusText, headers: res.headers });
    };
  });
}

/** What the page's event streams carried so far, in the order they were opened. */
export async function eventStreams(page: Page): Promise<string[]> {
  return page.evaluate(() => (window as unknown as { __eventStreams: string[] }).__eventStreams);
}

export async function formJson(page: Page, path: string): Promise<Record<string, unknown>> {
  const text = await page.evaluate((p) => (window as unknown as { __formJson: Record<string, string> }).__formJson[p] ?? '{}', path);
  return JSON.parse(text) as Record<string, unknown>;
}

export async function formParts(page: Page, path: string): Promise<string[]> {
  return page.evaluate((p) => (window as unknown as { __formParts: Record<string, string[]> }).__formParts[p] ?? [], path);
}

export async function openApp(page: Page, hash = 'txt2img', query = ''): Promise<void> {
  await page.goto(`/?interval=${INTERVAL_MS}${query}#${hash}`);
  await expect(page.getByTestId(`tab-${hash}`)).toHaveAttribute('aria-current', 'page');
}

/** A PNG drawn in the page's own canvas: a colour gradient with a disc, so every mode has detail. */
export async function makePng(page: Page, width: number, height: number, hue: number): Promise<Buffer> {
  const dataUrl = await page.evaluate(
    ([w, h, hh]) => {
      const c = document.createElement('canvas');
      c.width = w;
      c.height = h;
      const ctx = c.getContext('2d') as CanvasRenderingContext2D;
      const g = ctx.createLinearGradient(0, 0, w, h);
      g.addColorStop(0, `hsl(${hh} 80% 60%)`);
      g.addColorStop(1, `hsl(${(hh + 120) % 360} 80% 30%)`);
      ctx.fillStyle = g;
      ctx.fillRect(0, 0, w, h);
      ctx.fillStyle = '#fff';
      ctx.beginPath();
      ctx.arc(w / 2, h / 2, Math.min(w, h) / 4, 0, Math.PI * 2);
      ctx.fill();
      return c.toDataURL('image/png');
    },
    [width, height, hue] as const,
  );
  return Buffer.from(dataUrl.split(',')[1], 'base64');
}

export async function upload(page: Page, testId: string, name: string, png: Buffer): Promise<void> {
  await page.getByTestId(testId).locator('input[type=file]').setInputFiles({ name, mimeType: 'image/png', buffer: png });
  await expect(page.getByTestId(testId).getByText(/\d+ × \d+/)).toBeVisible();
}

export async function setNumber(page: Page, testId: string, value: number): Promise<void> {
  const input = page.getByTestId(testId).locator('input[type=number]');
  await input.fill(String(value));
  await input.blur();
}

/** Press Generate and return the submission's answer. */
export async function generate(page: Page, route: string): Promise<Response> {
  const [response] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === `/api/${route}` && r.request().method() === 'POST'),
    page.getByTestId('generate').click(),
  ]);
  return response;
}

/**
 * The routes of the image modes may answer 501 until the backend builds them. Then the GUI must
 * show the server's own message next to the form; otherwise the job must finish with an image.
 * Returns the card of a submitted job, or null when the server said 501.
 */
export async function expectImageOrNotImplemented(page: Page, response: Response, shotName: string): Promise<Locator | null> {
  if (response.status() === 501) {
    const body = (await response.json()) as { error: string };
    console.log(`${shotName}: the server answered 501 (${body.error}); the GUI shows it`);
    await expect(page.getByTestId('form-error')).toContainText(body.error);
    await expect(page.getByTestId('form-error')).toContainText(/not available on this server yet/i);
    await shot(page, shotName);
    return null;
  }
  expect(response.status(), await response.text()).toBe(200);
  const { name } = (await response.json()) as { name: string };
  const card = page.locator(`[data-testid="job-card"][data-name="${name}"]`);
  await expectSuccess(card);
  console.log(`${shotName}: the job finished with an image`);
  await shot(page, shotName);
  return card;
}

/** Wait for a card to succeed and its image to load for real. */
export async function expectSuccess(card: Locator): Promise<void> {
  await expect(card).toHaveAttribute('data-status', /success|failed|cancelled|unknown/, { timeout: JOB_TIMEOUT_MS });
  const status = await card.getAttribute('data-status');
  if (status !== 'success') {
    throw new Error(`job ended ${status}: ${await card.innerText()}`);
  }
  const img = card.getByTestId('card-image');
  await expect(img).toBeVisible();
  await expect.poll(() => img.evaluate((el: HTMLImageElement) => el.complete && el.naturalWidth), { timeout: 30_000 }).toBeGreaterThan(0);
}
