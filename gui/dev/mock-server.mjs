#!/usr/bin/env node
/**
 * A stand-in for the api, for working on the GUI without the stack: it serves dist/ and answers
 * the routes the GUI calls with the shapes of spec/contract.md (and our server's differences:
 * 1-based queue in a submit's answer and 0-based in status records, as onnx-web's; bare-array
 * cancel, `cancelled` final). Jobs run on a timer, not a model.
 * The e2e suite runs against the real stack; src/test/mock-server.test.ts runs this one.
 *
 *   node dev/mock-server.mjs [port]      (port 0 picks a free one; the first line printed names it)
 *
 *   MOCK_STEP_MS=200            time per step
 *   MOCK_NOT_IMPLEMENTED=a,b    routes answering 501 (img2img, blend, …)
 *   MOCK_API_KEYS=k1,k2         keys mode: every /api call needs `Authorization: Bearer <key>`
 *                               (401 without one, 403 for another); MOCK_REVOKED_KEYS lists 403s
 *   MOCK_NO_JOBS_LIST=1         `GET /api/jobs` answers 404, as an older server does
 *   MOCK_EVENTS_STATUS=503      `GET /api/job/events` answers this instead of a stream (404 as an
 *                               older server, 429/503 as a server out of stream places)
 *
 * A prompt containing MOCK_FAIL makes its job fail at the first step with reason `oom` and an
 * `error` message; `steps.total` counts one unit more than the steps asked for (the saving of the
 * outputs), as the real server's does.
 */
import { createReadStream, existsSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { deflateSync } from 'node:zlib';

const port = Number(process.argv[2] ?? 5000);
const dist = fileURLToPath(new URL('../dist/', import.meta.url));
const stepMs = Number(process.env.MOCK_STEP_MS ?? 150);
const list = (value) => (value ?? '').split(',').map((s) => s.trim()).filter(Boolean);
const notImplemented = new Set(list(process.env.MOCK_NOT_IMPLEMENTED));
const apiKeys = new Set(list(process.env.MOCK_API_KEYS));
const revokedKeys = new Set(list(process.env.MOCK_REVOKED_KEYS));
const jobsListing = !process.env.MOCK_NO_JOBS_LIST;
const eventsStatus = Number(process.env.MOCK_EVENTS_STATUS ?? 0);
const ENDED = new Set(['success', 'failed', 'cancelled', 'unknown']);

const params = {
  version: '0.13.0',
  motd: { en: 'Welcome to onnx-web!', de: 'Willkommen bei onnx-web!' },
  batch: { default: 1, min: 1, max: 5, step: 1 },
  cfg: { default: 6, min: 0, max: 30, step: 0.1 },
  eta: { default: 0, min: 0, max: 1, step: 0.01 },
  steps: { default: 25, min: 1, max: 300, step: 1 },
  seed: { default: -1, min: -1, max: 4294967295, step: 1 },
  width: { default: 512, min: 128, max: 8192, step: 8 },
  height: { default: 512, min: 128, max: 8192, step: 8 },
  model: { default: 'stable-diffusion-onnx-v1-5', keys: [] },
  scheduler: { default: 'euler-a', keys: [] },
  platform: { default: 'any', keys: [] },
  prompt: { default: 'an astronaut eating a hamburger', keys: [] },
  highresMethod: { default: 'lanczos', keys: ['bilinear', 'lanczos', 'upscale'] },
  upscaleOrder: { default: 'correction-first', keys: ['correction-both', 'correction-first', 'correction-last'] },
  tileOrder: { default: 'spiral', keys: ['grid', 'spiral'] },
  highresSteps: { default: 0, min: 1, max: 500, step: 1 },
  strength: { default: 0.5, min: 0, max: 1, step: 0.01 },
};

const lists = {
  '/api/settings/models': {
    correction: ['correction-codeformer'],
    diffusion: ['stable-diffusion-onnx-v1-5', 'diffusion-tiny-demo'],
    networks: [
      { name: 'canny', tokens: [], type: 'control' },
      { name: 'autumn', tokens: ['autumn'], type: 'inversion' },
      { name: 'details', tokens: ['detailed'], type: 'lora' },
    ],
    upscaling: ['upscaling-real-esrgan-x4-plus'],
  },
  '/api/settings/pipelines': ['controlnet', 'img2img', 'inpaint', 'lpw', 'panorama', 'txt2img', 'upscale'],
  '/api/settings/platforms': ['any', 'cpu'],
  '/api/settings/schedulers': ['ddim', 'euler', 'euler-a', 'dpm-multi', 'lcm'],
  '/api/settings/filters': { mask: ['none', 'gaussian-multiply', 'gaussian-screen'], prompt: [], source: ['canny', 'none'] },
  '/api/settings/noises': ['fill-edge', 'fill-mask', 'gaussian', 'histogram', 'normal', 'uniform'],
  '/api/settings/wildcards': ['animals', 'colors/warm'],
  '/api/settings/strings': { en: { translation: { model: { 'diffusion-tiny-demo': 'Tiny demo model' } } } },
};

function crc32(buf) {
  let c = ~0;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return ~c >>> 0;
}

function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}

/** A gradient PNG with a `parameters` text chunk, so "load from file" has something to read. */
function png(width, height, seed, text) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (width * 3 + 1);
    for (let x = 0; x < width; x++) {
      raw[row + 1 + x * 3] = (x * 255) / width;
      raw[row + 2 + x * 3] = (y * 255) / height;
      raw[row + 3 + x * 3] = (seed * 53) % 256;
    }
  }
  return Buffer.concat([
    Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk('IHDR', ihdr),
    chunk('tEXt', Buffer.from(`parameters\0${text}`, 'latin1')),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

const jobs = new Map();
let counter = 0;
const zero = () => ({ current: 0, total: 0 });

function pendingNames() {
  return [...jobs.values()].filter((j) => j.status === 'pending').map((j) => j.name);
}

function record(job) {
  const pending = pendingNames();
  const base = {
    name: job.name,
    status: job.status,
    queue: job.status === 'pending' ? { current: pending.indexOf(job.name), total: pending.length } : zero(),
    stages: job.stages,
    steps: job.steps,
    tiles: job.tiles,
  };
  if (job.reason) base.reason = job.reason;
  if (job.error) base.error = job.error;
  if (job.status === 'success') {
    base.outputs = job.outputs;
    base.thumbnails = job.outputs;
    base.metadata = job.outputs.map((o) => job.metadata(o));
  }
  return base;
}

function advance() {
  const running = [...jobs.values()].find((j) => j.status === 'running');
  if (running) {
    if (running.fails) {
      running.status = 'failed';
      running.reason = 'oom';
      running.error = 'The worker ran out of memory at this size; try a smaller image.';
      return;
    }
    running.steps.current += 1;
    if (running.steps.current >= running.steps.total) {
      running.status = 'success';
      running.stages.current = running.stages.total - 1;
    }
    return;
  }
  const next = [...jobs.values()].find((j) => j.status === 'pending');
  if (next) next.status = 'running';
}
setInterval(advance, stepMs);

function readBody(req) {
  return new Promise((resolve) => {
    const parts = [];
    req.on('data', (d) => parts.push(d));
    req.on('end', () => resolve(Buffer.concat(parts)));
  });
}

function jsonField(body, contentType) {
  if (contentType.startsWith('application/json')) return JSON.parse(body.toString('utf8'));
  const boundary = /boundary=(.+)$/.exec(contentType)?.[1];
  if (!boundary) return {};
  for (const part of body.toString('latin1').split(`--${boundary}`)) {
    if (part.includes('name="json"')) return JSON.parse(Buffer.from(part.split('\r\n\r\n')[1].replace(/\r\n$/, ''), 'latin1').toString('utf8'));
  }
  return {};
}

function send(res, status, value) {
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify(value));
}

/** Whose job a request makes or lists: its API key in keys mode, everyone's ('') otherwise. */
function owner(req) {
  const header = req.headers.authorization ?? '';
  return apiKeys.size > 0 && header.startsWith('Bearer ') ? header.slice(7).trim() : '';
}

function submit(mode, doc, by) {
  const p = doc.params ?? doc.defaults ?? {};
  if (typeof p.steps === 'number' && (p.steps < 1 || p.steps > 300)) return [400, { error: 'steps: must be between 1 and 300' }];
  const seed = p.seed === -1 || p.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : p.seed;
  const name = `${mode}_${seed}_${(++counter).toString(16).padStart(8, '0')}_${Math.floor(Date.now() / 1000)}`;
  const batch = mode === 'chain' ? 1 : (p.batch ?? 1);
  const width = mode === 'chain' ? (p.width ?? 512) * (doc.stages?.find((s) => s.type === 'blend-grid')?.params.width ?? 1) : (p.width ?? 512);
  const height = mode === 'chain' ? (p.height ?? 512) * (doc.stages?.find((s) => s.type === 'blend-grid')?.params.height ?? 1) : (p.height ?? 512);
  const job = {
    name,
    status: 'pending',
    stages: { current: 0, total: mode === 'chain' ? doc.stages.length : 1 },
    // One unit more than the steps asked for: the saving of the outputs, as on the real server.
    steps: { current: 0, total: (p.steps ?? 25) + 1 },
    fails: typeof p.prompt === 'string' && p.prompt.includes('MOCK_FAIL'),
    created: counter,
    owner: by,
    tiles: zero(),
    outputs: Array.from({ length: batch }, (_, i) => `${name}_${i}.png`),
    width,
    height,
    seed,
    metadata: (output) => ({
      input_size: { width, height },
      outputs: [output],
      params: { ...p, seed, model: p.model ?? 'stable-diffusion-onnx-v1-5', input_prompt: p.prompt },
      models: [{ name: p.model ?? 'stable-diffusion-onnx-v1-5', hash: 'unknown', weight: 1 }],
      inversions: [],
      loras: [],
      size: { width, height },
    }),
  };
  jobs.set(name, job);
  // The submit answer counts the queue from 1 (contract §4.3), the status route from 0.
  const answer = record(job);
  if (answer.queue.total > 0) answer.queue = { ...answer.queue, current: answer.queue.current + 1 };
  return [200, answer];
}

/** `GET /api/jobs`: the jobs newest first, filtered by status, `limit` a page, `cursor` the offset. */
function listJobs(url, by) {
  const status = url.searchParams.get('status') ?? '';
  const statuses = ['pending', 'running', 'success', 'failed', 'cancelled'];
  if (status !== '' && !statuses.includes(status)) return [400, { error: `status: must be one of ${statuses.join(', ')}` }];
  const limit = Number(url.searchParams.get('limit') ?? 20);
  if (!Number.isInteger(limit) || limit < 1 || limit > 100) return [400, { error: 'limit: must be between 1 and 100' }];
  const cursor = url.searchParams.get('cursor');
  const start = cursor === null ? 0 : Number(cursor);
  if (!Number.isInteger(start) || start < 0) return [400, { error: 'cursor: not a cursor this server gave' }];
  const all = [...jobs.values()]
    .filter((j) => j.owner === by && (status === '' || j.status === status))
    .sort((a, b) => b.created - a.created);
  const page = all.slice(start, start + limit);
  return [200, { jobs: page.map(record), next: start + limit < all.length ? String(start + limit) : null }];
}

/** Keys mode: the answer refusing a request, or null when its key is good (or keys are off). */
function refusal(req) {
  if (apiKeys.size === 0) return null;
  const header = req.headers.authorization ?? '';
  const key = header.startsWith('Bearer ') ? header.slice(7).trim() : '';
  if (key === '') return [401, { error: 'an API key is required (Authorization: Bearer <key>)' }];
  if (revokedKeys.has(key)) return [403, { error: 'this API key was revoked' }];
  if (!apiKeys.has(key)) return [403, { error: 'unknown API key' }];
  return null;
}

function names(url) {
  return (url.searchParams.get('jobs') ?? '').split(',').map((s) => s.trim()).filter(Boolean);
}

/** A 400 for a job list out of bounds (1 to 10 names), or null. */
function badNames(n) {
  if (n.length === 0) return [400, { error: 'jobs: at least one job name is required' }];
  if (n.length > 10) return [400, { error: 'jobs: at most 10 names' }];
  return null;
}

function statusOf(name) {
  return jobs.has(name) ? record(jobs.get(name)) : { name, status: 'unknown', queue: zero(), stages: zero(), steps: zero(), tiles: zero() };
}

/**
 * `GET /api/job/events`, as the real server streams it: the reconnect hint, each job's record,
 * the record again whenever it changes (each step here), a heartbeat comment, and `end` once every
 * job has ended.
 */
function streamEvents(req, res, n) {
  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
  res.write('retry: 2000\n\n');
  const sent = new Map();
  let id = 0;
  const changes = setInterval(tick, Math.max(10, stepMs / 3));
  const heartbeat = setInterval(() => res.write(': heartbeat\n\n'), 15_000);
  const stop = () => {
    clearInterval(changes);
    clearInterval(heartbeat);
  };
  req.on('close', stop);
  tick();
  function tick() {
    for (const name of n) {
      const record = statusOf(name);
      const data = JSON.stringify(record);
      if (sent.get(name)?.data === data) continue;
      sent.set(name, { data, status: record.status });
      res.write(`id: ${++id}\nevent: status\ndata: ${data}\n\n`);
    }
    if ([...sent.values()].every((s) => ENDED.has(s.status))) {
      stop();
      res.end(`id: ${++id}\nevent: end\ndata: ${JSON.stringify({ jobs: n })}\n\n`);
    }
  }
}

createServer(async (req, res) => {
  const url = new URL(req.url, `http://${req.headers.host}`);
  const path = url.pathname;
  const refused = path.startsWith('/api/') ? refusal(req) : null;
  if (refused) return send(res, ...refused);
  if (path === '/api/settings/params') return send(res, 200, params);
  if (path === '/api/jobs' && req.method === 'GET') {
    if (!jobsListing) return send(res, 404, { error: '404 Not Found' });
    return send(res, ...listJobs(url, owner(req)));
  }
  if (lists[path]) return send(res, 200, lists[path]);
  const route = /^\/api\/(txt2img|img2img|inpaint|upscale|blend|job)$/.exec(path);
  if (route && req.method === 'POST') {
    const body = await readBody(req);
    if (notImplemented.has(route[1])) return send(res, 501, { error: `${route[1]}: not implemented yet` });
    const [status, value] = submit(route[1] === 'job' ? 'chain' : route[1], jsonField(body, req.headers['content-type'] ?? ''), owner(req));
    return send(res, status, value);
  }
  if (path === '/api/job/status') {
    const n = names(url);
    const bad = badNames(n);
    return bad ? send(res, ...bad) : send(res, 200, n.map(statusOf));
  }
  if (path === '/api/job/events' && req.method === 'GET') {
    if (eventsStatus) {
      return send(res, eventsStatus, { error: eventsStatus === 404 ? '404 Not Found' : 'too many event streams are open on this server; poll /api/job/status' });
    }
    const n = names(url);
    const bad = badNames(n);
    return bad ? send(res, ...bad) : streamEvents(req, res, n);
  }
  if (path === '/api/job/cancel' && req.method === 'PUT') {
    return send(res, 200, names(url).map((name) => {
      const job = jobs.get(name);
      if (job && (job.status === 'pending' || job.status === 'running')) job.status = 'cancelled';
      return { name, status: job?.status ?? 'unknown' };
    }));
  }
  if (path === '/api/worker/status' || path === '/api/extras') return send(res, 501, { error: 'admin routes: not implemented yet' });
  const output = /^\/output\/(.+?)_(\d+)\.png(\.json)?$/.exec(path);
  if (output && jobs.has(output[1])) {
    const job = jobs.get(output[1]);
    const file = `${output[1]}_${output[2]}.png`;
    if (output[3]) return send(res, 200, job.metadata(file));
    res.writeHead(200, { 'Content-Type': 'image/png' });
    const scale = Math.max(job.width, job.height) > 512 ? 512 / Math.max(job.width, job.height) : 1;
    return res.end(png(Math.round(job.width * scale), Math.round(job.height * scale), job.seed + Number(output[2]), `mock image\nNegative prompt: \nSteps: ${job.steps.total}, Sampler: Euler a, CFG scale: 6, Seed: ${job.seed}, Size: ${job.width}x${job.height}`));
  }
  const file = normalize(join(dist, path === '/' ? 'index.html' : path));
  if (file.startsWith(dist) && existsSync(file) && statSync(file).isFile()) {
    const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.json': 'application/json', '.svg': 'image/svg+xml' };
    res.writeHead(200, { 'Content-Type': types[extname(file)] ?? 'application/octet-stream' });
    return createReadStream(file).pipe(res);
  }
  res.writeHead(404, { 'Content-Type': 'text/html' });
  res.end('<h1>Not Found</h1>');
}).listen(port, '127.0.0.1', function () {
  console.log(`mock api on http://127.0.0.1:${this.address().port}/`);
});
