import { describe, expect, it, vi } from 'vitest';
import { ApiError, createClient, MAX_JOBS_PER_CALL, normaliseRoot } from './api';

type Call = { url: string; init: RequestInit };

function fakeFetch(respond: (call: Call) => Response | Promise<Response>) {
  const calls: Call[] = [];
  const fn = vi.fn(async (url: RequestInfo | URL, init: RequestInit = {}) => {
    const call = { url: String(url), init };
    calls.push(call);
    return respond(call);
  });
  return { fetch: fn as unknown as typeof fetch, calls };
}

const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });

const record = { name: 'txt2img_1_abc_1', status: 'pending', queue: { current: 0, total: 1 }, stages: { current: 0, total: 0 }, steps: { current: 0, total: 0 }, tiles: { current: 0, total: 0 } };

describe('createClient', () => {
  it('strips trailing slashes from the root', () => {
    expect(normaliseRoot('http://x:5000//')).toBe('http://x:5000');
    const { fetch, calls } = fakeFetch(() => json(200, { version: '0.13.0' }));
    void createClient({ root: 'http://x:5000/', fetch }).params();
    expect(calls[0].url).toBe('http://x:5000/api/settings/params');
  });

  it('sends an image job as multipart: the nested document in `json`, images as named file parts', async () => {
    const { fetch, calls } = fakeFetch(() => json(200, record));
    const client = createClient({ root: '', fetch });
    const doc = { device: { platform: 'any' }, params: { prompt: 'a cat' } };
    const answer = await client.submit('inpaint', doc, { source: new Blob(['s']), mask: new Blob(['m']) });
    expect(answer.name).toBe(record.name);
    expect(calls[0].url).toBe('/api/inpaint');
    expect(calls[0].init.method).toBe('POST');
    const form = calls[0].init.body as FormData;
    expect(JSON.parse(form.get('json') as string)).toEqual(doc);
    expect(form.get('source')).toBeInstanceOf(Blob);
    expect(form.get('mask')).toBeInstanceOf(Blob);
    expect([...form.keys()].sort()).toEqual(['json', 'mask', 'source']);
  });

  it('reads the delay of a Retry-After header into the error, ignoring any other form', async () => {
    const answers = [
      new Response(JSON.stringify({ error: 'slow down' }), { status: 429, headers: { 'Retry-After': '17' } }),
      new Response(JSON.stringify({ error: 'down' }), { status: 503, headers: { 'Retry-After': 'Wed, 21 Oct 2015 07:28:00 GMT' } }),
    ];
    const { fetch } = fakeFetch(() => answers.shift() as Response);
    const client = createClient({ root: '', fetch });
    const first = await client.submitChain({ stages: [] }).catch((e: unknown) => e);
    const second = await client.submitChain({ stages: [] }).catch((e: unknown) => e);
    expect(first).toBeInstanceOf(ApiError);
    expect([(first as ApiError).status, (first as ApiError).retryAfterS, (first as ApiError).message]).toEqual([429, 17, 'slow down']);
    expect((second as ApiError).retryAfterS).toBeNull();
  });

  it('sends a chain as a JSON body to /api/job', async () => {
    const { fetch, calls } = fakeFetch(() => json(200, record));
    await createClient({ root: 'http://h', fetch }).submitChain({ stages: [] });
    expect(calls[0].url).toBe('http://h/api/job');
    expect((calls[0].init.headers as Record<string, string>)['Content-Type']).toBe('application/json');
    expect(JSON.parse(calls[0].init.body as string)).toEqual({ stages: [] });
  });

  it('asks for status with comma-separated, encoded names and refuses more than ten', async () => {
    const { fetch, calls } = fakeFetch(() => json(200, []));
    const client = createClient({ root: '', fetch });
    await client.status(['a', 'b c']);
    expect(calls[0].url).toBe('/api/job/status?jobs=a,b%20c');
    const eleven = Array.from({ length: MAX_JOBS_PER_CALL + 1 }, (_, i) => `j${i}`);
    expect(() => client.status(eleven)).toThrow(/at most 10/);
    expect(() => client.status([])).toThrow(/at least one/);
    expect(calls).toHaveLength(1);
  });

  it('reads the cancel answer as our bare array or onnx-web wrapped in results', async () => {
    const bare = fakeFetch(() => json(200, [{ name: 'a', status: 'cancelled' }]));
    expect(await createClient({ root: '', fetch: bare.fetch }).cancel(['a'])).toEqual([{ name: 'a', status: 'cancelled' }]);
    expect(bare.calls[0].init.method).toBe('PUT');
    expect(bare.calls[0].url).toBe('/api/job/cancel?jobs=a');
    const wrapped = fakeFetch(() => json(200, { results: [{ name: 'a', status: 'pending' }] }));
    expect(await createClient({ root: '', fetch: wrapped.fetch }).cancel(['a'])).toEqual([{ name: 'a', status: 'pending' }]);
  });

  it("turns a 400 into an ApiError carrying the server's `field: rule` message", async () => {
    const { fetch } = fakeFetch(() => json(400, { error: 'steps: must be between 1 and 300' }));
    const err = await createClient({ root: '', fetch }).submit('txt2img', {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).status).toBe(400);
    expect((err as ApiError).message).toBe('steps: must be between 1 and 300');
  });

  it('marks a 501 as not implemented, with its message', async () => {
    const { fetch } = fakeFetch(() => json(501, { error: 'img2img is not built yet' }));
    const err = (await createClient({ root: '', fetch }).submit('img2img', {}).catch((e: unknown) => e)) as ApiError;
    expect(err.notImplemented).toBe(true);
    expect(err.message).toBe('img2img is not built yet');
  });

  it('falls back to the status line for an HTML error page', async () => {
    const { fetch } = fakeFetch(() => new Response('<h1>Internal Server Error</h1>', { status: 500, statusText: 'Internal Server Error' }));
    const err = (await createClient({ root: '', fetch }).models().catch((e: unknown) => e)) as ApiError;
    expect(err.message).toBe('500 Internal Server Error');
    expect(err.kind).toBe('http');
  });

  it('reports a network failure and a timeout as such', async () => {
    const down = fakeFetch(() => Promise.reject(new TypeError('Failed to fetch')));
    const err = (await createClient({ root: 'http://h', fetch: down.fetch }).params().catch((e: unknown) => e)) as ApiError;
    expect(err.kind).toBe('network');
    expect(err.message).toContain('http://h');

    const hang = fakeFetch(
      ({ init }) =>
        new Promise<Response>((_, reject) => init.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')))),
    );
    const slow = (await createClient({ root: '', fetch: hang.fetch }).params(20).catch((e: unknown) => e)) as ApiError;
    expect(slow.kind).toBe('timeout');
  });

  it('builds output URLs under /output/, and admin calls with the token in their header only', async () => {
    const { fetch, calls } = fakeFetch(() => json(200, {}));
    const client = createClient({ root: 'http://h', token: 'a b', fetch });
    expect(client.outputUrl('txt2img_1_x_2_0.png')).toBe('http://h/output/txt2img_1_x_2_0.png');
    expect(client.outputUrl('x 1.png.json')).toBe('http://h/output/x%201.png.json');
    await client.workerStatus();
    await client.restartWorkers();
    expect(calls.map((c) => [c.init.method, c.url])).toEqual([
      ['GET', 'http://h/api/worker/status'],
      ['POST', 'http://h/api/worker/restart'],
    ]);
    expect(calls.map((c) => new Headers(c.init.headers).get('Authorization'))).toEqual(['Bearer a b', 'Bearer a b']);
  });

  it('saves the extras document as JSON text and reaches the model store, all with the token', async () => {
    const { fetch, calls } = fakeFetch(() => json(200, {}));
    const client = createClient({ root: 'http://h', token: 't', apiKey: () => 'k', fetch });
    await client.saveExtras('{"diffusion": []}');
    await client.modelStore();
    await client.deleteModel('diffusion-a b');
    expect(calls.map((c) => [c.init.method, c.url])).toEqual([
      ['PUT', 'http://h/api/extras'],
      ['GET', 'http://h/api/models'],
      ['DELETE', 'http://h/api/models/diffusion-a%20b'],
    ]);
    expect(calls[0].init.body).toBe('{"diffusion": []}');
    const headers = new Headers(calls[0].init.headers);
    expect(headers.get('Content-Type')).toBe('application/json');
    expect(calls.map((c) => new Headers(c.init.headers).get('Authorization'))).toEqual(Array(3).fill('Bearer t'));
  });

  it("keeps an error answer's JSON body, for field errors and conflicts", async () => {
    const rejected = { error: 'the extras document is invalid', errors: [{ field: 'networks[0].type', rule: 'required' }] };
    const { fetch } = fakeFetch(() => json(400, rejected));
    const err = (await createClient({ root: '', fetch }).saveExtras('{}').catch((e: unknown) => e)) as ApiError;
    expect(err.status).toBe(400);
    expect(err.message).toBe('the extras document is invalid');
    expect(err.body).toEqual(rejected);
    const html = fakeFetch(() => new Response('<h1>oops</h1>', { status: 502, statusText: 'Bad Gateway' }));
    const plain = (await createClient({ root: '', fetch: html.fetch }).modelStore().catch((e: unknown) => e)) as ApiError;
    expect([plain.message, plain.body]).toEqual(['502 Bad Gateway', null]);
  });

  it('sends the API key as a Bearer header on every call, read at call time', async () => {
    const { fetch, calls } = fakeFetch(() => json(200, record));
    let key = '';
    const client = createClient({ root: '', fetch, apiKey: () => key });
    await client.params();
    expect(new Headers(calls[0].init.headers).has('Authorization')).toBe(false);
    key = 'k-123';
    await client.params();
    await client.submit('txt2img', {});
    await client.submitChain({});
    await client.status(['a']);
    await client.cancel(['a']);
    await client.jobs();
    await client.outputBlob('a_0.png');
    const sent = calls.slice(1).map((c) => new Headers(c.init.headers).get('Authorization'));
    expect(sent).toEqual(Array(7).fill('Bearer k-123'));
    expect(new Headers(calls[3].init.headers).get('Content-Type')).toBe('application/json');
  });

  it('lets the admin token, not the API key, speak on admin calls that carry one', async () => {
    const { fetch, calls } = fakeFetch(() => json(200, {}));
    await createClient({ root: '', token: 'admin', apiKey: () => 'k', fetch }).workerStatus();
    await createClient({ root: '', apiKey: () => 'k', fetch }).workerStatus();
    await createClient({ root: '', token: 'admin', apiKey: () => 'k', fetch }).params();
    expect(calls.map((c) => new Headers(c.init.headers).get('Authorization'))).toEqual([
      'Bearer admin',
      'Bearer k',
      'Bearer k',
    ]);
  });

  it('marks 401 and 403 as a refused key, with the server message', async () => {
    const { fetch } = fakeFetch(() => json(403, { error: 'this API key was revoked' }));
    const err = (await createClient({ root: '', fetch }).status(['a']).catch((e: unknown) => e)) as ApiError;
    expect(err.unauthorised).toBe(true);
    expect(err.message).toBe('this API key was revoked');
    expect(new ApiError('http', 500, 'x').unauthorised).toBe(false);
  });

  it('lists jobs with status, limit and cursor, and answers null where the server has no listing', async () => {
    const page = { jobs: [record], next: 'abc' };
    const { fetch, calls } = fakeFetch(() => json(200, page));
    const client = createClient({ root: 'http://h', fetch });
    expect(await client.jobs({ status: 'failed', limit: 20, cursor: 'x y' })).toEqual(page);
    await client.jobs();
    expect(calls.map((c) => c.url)).toEqual(['http://h/api/jobs?status=failed&limit=20&cursor=x+y', 'http://h/api/jobs']);
    const last = fakeFetch(() => json(200, { jobs: [], next: null }));
    expect(await createClient({ root: '', fetch: last.fetch }).jobs()).toEqual({ jobs: [], next: null });
    for (const status of [404, 405, 501]) {
      const absent = fakeFetch(() => json(status, { error: 'no' }));
      expect(await createClient({ root: '', fetch: absent.fetch }).jobs()).toBeNull();
    }
    const broken = fakeFetch(() => json(500, { error: 'db down' }));
    await expect(createClient({ root: '', fetch: broken.fetch }).jobs()).rejects.toThrow('db down');
  });

  it('opens the event stream with the API key and answers its body, or null where the server has none', async () => {
    const sse = () => new Response('retry: 2000\n\n', { status: 200, headers: { 'Content-Type': 'text/event-stream; charset=utf-8' } });
    const { fetch, calls } = fakeFetch(sse);
    const client = createClient({ root: 'http://h', fetch, apiKey: () => 'k-1' });
    const body = await client.jobEvents(['a', 'b c'], new AbortController().signal);
    expect(await new Response(body).text()).toBe('retry: 2000\n\n');
    expect(calls[0].url).toBe('http://h/api/job/events?jobs=a,b%20c');
    const headers = new Headers(calls[0].init.headers);
    expect(headers.get('Authorization')).toBe('Bearer k-1');
    expect(headers.get('Accept')).toBe('text/event-stream');
    await expect(client.jobEvents([], new AbortController().signal)).rejects.toThrow(/at least one/);

    const signal = new AbortController().signal;
    for (const status of [404, 405, 501]) {
      const absent = fakeFetch(() => json(status, { error: 'no' }));
      expect(await createClient({ root: '', fetch: absent.fetch }).jobEvents(['a'], signal)).toBeNull();
    }
    // An answer that is no event stream (a proxy's page, onnx-web's index) is no stream either.
    const page = fakeFetch(() => new Response('<html></html>', { status: 200, headers: { 'Content-Type': 'text/html' } }));
    expect(await createClient({ root: '', fetch: page.fetch }).jobEvents(['a'], signal)).toBeNull();
    for (const status of [429, 503]) {
      const full = fakeFetch(() => json(status, { error: 'too many event streams' }));
      const err = (await createClient({ root: '', fetch: full.fetch }).jobEvents(['a'], signal).catch((e: unknown) => e)) as ApiError;
      expect([err.kind, err.status, err.message]).toEqual(['http', status, 'too many event streams']);
    }
  });

  it('aborts the event stream when its signal is', async () => {
    const hang = fakeFetch(
      ({ init }) =>
        new Promise<Response>((_, reject) => init.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')))),
    );
    const closing = new AbortController();
    const opening = createClient({ root: '', fetch: hang.fetch }).jobEvents(['a'], closing.signal);
    closing.abort();
    const err = (await opening.catch((e: unknown) => e)) as ApiError;
    expect(err).toBeInstanceOf(ApiError);
    expect(err.kind).toBe('network');
  });
});
