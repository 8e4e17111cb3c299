// @vitest-environment node
/** The dev mock server (dev/mock-server.mjs) answers the routes the GUI's newer views call. */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { type SseEvent, SseParser } from '../client/sse';

const script = fileURLToPath(new URL('../../dev/mock-server.mjs', import.meta.url));
let child: ChildProcess | null = null;

/** Start the mock on a free port with extra environment; resolves to its base URL. */
function start(env: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    child = spawn(process.execPath, [script, '0'], { env: { ...process.env, MOCK_STEP_MS: '20', ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
    child.on('error', reject);
    child.stdout?.on('data', (data: Buffer) => {
      const url = /http:\/\/127\.0\.0\.1:\d+/.exec(data.toString())?.[0];
      if (url) resolve(url);
    });
  });
}

afterEach(() => {
  child?.kill();
  child = null;
});

async function submit(base: string, prompt: string, headers: Record<string, string> = {}) {
  const form = new FormData();
  form.append('json', JSON.stringify({ params: { prompt, steps: 2, seed: 1 } }));
  const res = await fetch(`${base}/api/txt2img`, { method: 'POST', body: form, headers });
  return (await res.json()) as { name: string; steps: { total: number } };
}

async function until<T>(probe: () => Promise<T | undefined>): Promise<T> {
  for (let i = 0; i < 200; i++) {
    const value = await probe();
    if (value !== undefined) return value;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error('timed out');
}

describe('the mock server', () => {
  it('lists jobs newest first, a page at a time, filtered by status, with failures explained', async () => {
    const base = await start();
    const names: string[] = [];
    for (const prompt of ['one', 'two MOCK_FAIL', 'three']) names.push((await submit(base, prompt)).name);
    const failed = await until(async () => {
      const [record] = await (await fetch(`${base}/api/job/status?jobs=${names[1]}`)).json();
      return record.status === 'failed' ? record : undefined;
    });
    expect(failed).toMatchObject({ reason: 'oom', error: expect.stringMatching(/memory/) });

    const first = await (await fetch(`${base}/api/jobs?limit=2`)).json();
    expect(first.jobs.map((j: { name: string }) => j.name)).toEqual([names[2], names[1]]);
    expect(first.next).toEqual(expect.any(String));
    const second = await (await fetch(`${base}/api/jobs?limit=2&cursor=${first.next}`)).json();
    expect(second).toMatchObject({ jobs: [{ name: names[0] }], next: null });
    const onlyFailed = await (await fetch(`${base}/api/jobs?status=failed`)).json();
    expect(onlyFailed.jobs.map((j: { name: string }) => j.name)).toEqual([names[1]]);
    expect((await fetch(`${base}/api/jobs?status=bogus`)).status).toBe(400);
    // steps.total counts the saving of the outputs too, as the real server's does.
    expect((await submit(base, 'four')).steps.total).toBe(3);
  });

  it('answers 404 for the listing where told to, as an older server does', async () => {
    const base = await start({ MOCK_NO_JOBS_LIST: '1' });
    expect((await fetch(`${base}/api/jobs`)).status).toBe(404);
  });

  it('in keys mode refuses a missing key (401) and a revoked one (403), and lists only the caller’s jobs', async () => {
    const base = await start({ MOCK_API_KEYS: 'alice,bob,old', MOCK_REVOKED_KEYS: 'old' });
    const missing = await fetch(`${base}/api/settings/params`);
    expect(missing.status).toBe(401);
    expect((await missing.json()).error).toMatch(/API key/);
    const revoked = await fetch(`${base}/api/settings/params`, { headers: { Authorization: 'Bearer old' } });
    expect(revoked.status).toBe(403);
    const alice = { Authorization: 'Bearer alice' };
    expect((await fetch(`${base}/api/settings/params`, { headers: alice })).status).toBe(200);
    const mine = await submit(base, 'mine', alice);
    await submit(base, 'theirs', { Authorization: 'Bearer bob' });
    const listed = await (await fetch(`${base}/api/jobs`, { headers: alice })).json();
    expect(listed.jobs.map((j: { name: string }) => j.name)).toEqual([mine.name]);
  });

  it('streams a job’s records as it runs, then `end`; in keys mode only with a key', async () => {
    // Steps slow enough that the stream, checking every third of a step, sees each one.
    const base = await start({ MOCK_API_KEYS: 'alice', MOCK_STEP_MS: '100' });
    const alice = { Authorization: 'Bearer alice' };
    expect((await fetch(`${base}/api/job/events?jobs=x`)).status).toBe(401);
    expect((await fetch(`${base}/api/job/events?jobs=`, { headers: alice })).status).toBe(400);
    const { name } = await submit(base, 'streamed', alice);
    const res = await fetch(`${base}/api/job/events?jobs=${name},nobody`, { headers: alice });
    expect(res.headers.get('content-type')).toBe('text/event-stream');
    const events: SseEvent[] = [];
    const retries: number[] = [];
    const parser = new SseParser({ onEvent: (e) => events.push(e), onRetry: (ms) => retries.push(ms) });
    const decoder = new TextDecoder();
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) parser.push(decoder.decode(chunk, { stream: true }));

    expect(retries).toEqual([2000]);
    expect(events.at(-1)).toMatchObject({ type: 'end', data: JSON.stringify({ jobs: [name, 'nobody'] }) });
    const mine = events.filter((e) => e.type === 'status').map((e) => JSON.parse(e.data)).filter((r) => r.name === name);
    const states = mine.map((r) => r.status).filter((s, i, all) => s !== all[i - 1]);
    expect(states.slice(-2)).toEqual(['running', 'success']);
    expect(mine.filter((r) => r.status === 'running').map((r) => r.steps.current)).toEqual([0, 1, 2]);
    expect(mine.at(-1).outputs).toEqual([`${name}_0.png`]);
    expect(events.map((e) => Number(e.id))).toEqual(events.map((_, i) => i + 1));
  });

  it('answers the events route with the status it is told to, as an older or a full server does', async () => {
    const base = await start({ MOCK_EVENTS_STATUS: '503' });
    const { name } = await submit(base, 'polled');
    const res = await fetch(`${base}/api/job/events?jobs=${name}`);
    expect(res.status).toBe(503);
    expect((await res.json()).error).toMatch(/poll/);
  });
});
