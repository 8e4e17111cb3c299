#!/usr/bin/env node
/**
 * A stand-in for the api, for working on the GUI without the stack: it serves dist/ and answers
 * the routes the GUI calls with the shapes of spec/contract.md (and our server's differences:
 * 0-based queue, bare-array cancel, `cancelled` final). Jobs run on a timer, not a model.
 * Not used by the e2e suite, which runs against the real stack.
 *
 *   node dev/mock-server.mjs [port]      (MOCK_STEP_MS=200 per step, MOCK_NOT_IMPLEMENTED=img2img,blend)
 */
import { createReadStream, existsSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { deflateSync } from 'node:zlib';

const port = Number(process.argv[2] ?? 5000);
const dist = fileURLToPath(new URL('../dist/', import.meta.url));
const stepMs = Number(process.env.MOCK_STEP_MS ?? 150);
const notImplemented = new Set((process.env.MOCK_NOT_IMPLEMENTED ?? '').split(',').filter(Boolean));

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

function submit(mode, doc) {
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
    steps: { current: 0, total: p.steps ?? 25 },
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
  return [200, record(job)];
}

function names(url) {
  return (url.searchParams.get('jobs') ?? '').split(',').map((s) => s.trim()).filter(Boolean);
}

createServer(async (req, res) => {
  const url = new URL(req.url, `http://${req.headers.host}`);
  const path = url.pathname;
  if (path === '/api/settings/params') return send(res, 200, params);
  if (lists[path]) return send(res, 200, lists[path]);
  const route = /^\/api\/(txt2img|img2img|inpaint|upscale|blend|job)$/.exec(path);
  if (route && req.method === 'POST') {
    const body = await readBody(req);
    if (notImplemented.has(route[1])) return send(res, 501, { error: `${route[1]}: not implemented yet` });
    const [status, value] = submit(route[1] === 'job' ? 'chain' : route[1], jsonField(body, req.headers['content-type'] ?? ''));
    return send(res, status, value);
  }
  if (path === '/api/job/status') {
    const n = names(url);
    if (n.length === 0) return send(res, 400, { error: 'jobs: at least one job name is required' });
    if (n.length > 10) return send(res, 400, { error: 'jobs: at most 10 names' });
    return send(res, 200, n.map((name) => (jobs.has(name) ? record(jobs.get(name)) : { name, status: 'unknown', queue: zero(), stages: zero(), steps: zero(), tiles: zero() })));
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
}).listen(port, '127.0.0.1', () => console.log(`mock api on http://127.0.0.1:${port}/`));
