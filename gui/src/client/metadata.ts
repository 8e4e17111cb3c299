/**
 * Read generation parameters back out of files: our metadata JSON (contract §7.3, in a sidecar or
 * a PNG `maker note`), the AUTOMATIC1111 `parameters` string (PNG text or JPEG EXIF UserComment),
 * and our own exported profiles.
 */
import type { TabParams } from '../state/params';
import type { ImageMetadata } from './types';

export type ParamPatch = Partial<Omit<TabParams, 'highres' | 'upscale' | 'border' | 'experimental' | 'grid'>> & {
  highres?: Partial<TabParams['highres']>;
  upscale?: Partial<TabParams['upscale']>;
};

/** A1111 sampler names → our scheduler names; names that are already ours pass through. */
const SAMPLERS: Record<string, string> = {
  'euler a': 'euler-a',
  euler: 'euler',
  ddim: 'ddim',
  ddpm: 'ddpm',
  pndm: 'pndm',
  plms: 'pndm',
  lms: 'lms-discrete',
  heun: 'heun',
  'dpm2': 'k-dpm-2',
  'dpm2 a': 'k-dpm-2-a',
  'dpm++ 2m': 'dpm-multi',
  'dpm++ 2m karras': 'dpm-multi',
  'dpm++ sde': 'dpm-sde',
  'dpm++ sde karras': 'dpm-sde',
  'dpm++ 2s a': 'dpm-single',
  unipc: 'unipc-multi',
  lcm: 'lcm',
  deis: 'deis-multi',
  ipndm: 'ipndm',
};

export function schedulerFromSampler(sampler: string): string {
  const key = sampler.trim().toLowerCase();
  return SAMPLERS[key] ?? key.replace(/\s+/g, '-');
}

/** Split `Key: value, Key: "quoted, value", …` respecting quotes. */
function splitSettings(line: string): Record<string, string> {
  const out: Record<string, string> = {};
  const re = /\s*([\w \-/]+?):\s*("(?:\\.|[^"\\])*"|[^,]*)(?:,|$)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(line)) !== null) {
    if (m[0] === '') break;
    const raw = m[2].trim();
    out[m[1].trim().toLowerCase()] = raw.startsWith('"') ? raw.slice(1, -1).replace(/\\"/g, '"') : raw;
  }
  return out;
}

const num = (v: string | undefined): number | undefined => {
  if (v === undefined) return undefined;
  const n = Number(v);
  return Number.isFinite(n) ? n : undefined;
};

/** Parse an AUTOMATIC1111 parameter string (three parts: prompt, negative prompt, settings). */
export function parseA1111(text: string): ParamPatch {
  const lines = text.replace(/\r\n/g, '\n').trim().split('\n');
  let settingsLine = '';
  if (lines.length > 1 && /^Steps:\s*\d+/.test(lines[lines.length - 1])) settingsLine = lines.pop() ?? '';
  const negIndex = lines.findIndex((l) => l.startsWith('Negative prompt:'));
  const promptLines = negIndex === -1 ? lines : lines.slice(0, negIndex);
  const negLines = negIndex === -1 ? [] : lines.slice(negIndex);
  const patch: ParamPatch = { prompt: promptLines.join('\n').trim() };
  if (negLines.length > 0) {
    patch.negativePrompt = negLines.join('\n').replace(/^Negative prompt:\s*/, '').trim();
  }
  const s = splitSettings(settingsLine);
  const steps = num(s.steps);
  const cfg = num(s['cfg scale']);
  const seed = num(s.seed);
  if (steps !== undefined) patch.steps = steps;
  if (cfg !== undefined) patch.cfg = cfg;
  if (seed !== undefined) patch.seed = seed;
  if (s.sampler) patch.scheduler = schedulerFromSampler(s.sampler);
  if (s.model) patch.model = s.model;
  const size = /^(\d+)x(\d+)$/.exec(s.size ?? '');
  if (size) {
    patch.width = Number(size[1]);
    patch.height = Number(size[2]);
  }
  return patch;
}

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const n = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
const b = (v: unknown): boolean | undefined => (typeof v === 'boolean' ? v : undefined);

function defined<T extends object>(obj: T): Partial<T> {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** Our metadata JSON (contract §7.3) → parameters. The prompt as typed (`input_prompt`) wins. */
export function paramsFromMetadata(meta: ImageMetadata): ParamPatch {
  const p = (meta.params ?? {}) as Record<string, unknown>;
  const size = meta.input_size && meta.input_size.width > 0 ? meta.input_size : meta.size;
  const patch: ParamPatch = defined({
    prompt: str(p.input_prompt) ?? str(p.prompt),
    negativePrompt: str(p.input_negative_prompt) ?? str(p.negative_prompt),
    model: str(p.model) ?? meta.models?.[0]?.name,
    pipeline: str(p.pipeline),
    scheduler: str(p.scheduler),
    cfg: n(p.cfg),
    steps: n(p.steps),
    seed: n(p.seed),
    eta: n(p.eta),
    batch: n(p.batch),
    tiled_vae: b(p.tiled_vae),
    unet_tile: n(p.unet_tile),
    unet_overlap: n(p.unet_overlap),
    vae_tile: n(p.vae_tile),
    vae_overlap: n(p.vae_overlap),
    width: size && size.width > 0 ? size.width : undefined,
    height: size && size.height > 0 ? size.height : undefined,
  });
  if (meta.highres) {
    const h = meta.highres as Record<string, unknown>;
    patch.highres = defined({
      highres: b(h.enabled),
      highresIterations: n(h.iterations),
      highresMethod: str(h.method),
      highresScale: n(h.scale),
      highresSteps: n(h.steps),
      highresStrength: n(h.strength),
    });
  }
  if (meta.upscale) {
    const u = meta.upscale as Record<string, unknown>;
    patch.upscale = defined({
      enabled: b(u.upscale),
      upscaleOrder: str(u.upscale_order),
      denoise: n(u.denoise),
      scale: n(u.scale),
      outscale: n(u.outscale),
      faces: b(u.faces),
      faceOutscale: n(u.face_outscale),
      faceStrength: n(u.face_strength),
    });
    const upscaling = str(u.upscale_model);
    const correction = str(u.correction_model);
    if (upscaling) patch.upscaling = upscaling;
    if (correction) patch.correction = correction;
  }
  return patch;
}

/** PNG text chunks (tEXt, iTXt uncompressed; zTXt via the browser's inflater) by keyword. */
export async function pngTextChunks(bytes: Uint8Array): Promise<Record<string, string>> {
  const sig = [137, 80, 78, 71, 13, 10, 26, 10];
  if (bytes.length < 8 || !sig.every((v, i) => bytes[i] === v)) return {};
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const latin1 = new TextDecoder('latin1');
  const utf8 = new TextDecoder('utf-8');
  const out: Record<string, string> = {};
  let pos = 8;
  while (pos + 8 <= bytes.length) {
    const length = view.getUint32(pos);
    const type = latin1.decode(bytes.subarray(pos + 4, pos + 8));
    const data = bytes.subarray(pos + 8, Math.min(bytes.length, pos + 8 + length));
    pos += 12 + length;
    if (type === 'IEND') break;
    const nul = data.indexOf(0);
    if (nul < 0) continue;
    const key = latin1.decode(data.subarray(0, nul));
    if (type === 'tEXt') out[key] = latin1.decode(data.subarray(nul + 1));
    else if (type === 'zTXt') out[key] = latin1.decode(await inflate(data.subarray(nul + 2)));
    else if (type === 'iTXt') {
      const compressed = data[nul + 1] === 1;
      let p = nul + 3;
      p = data.indexOf(0, p) + 1; // language tag
      p = data.indexOf(0, p) + 1; // translated keyword
      const text = data.subarray(p);
      out[key] = utf8.decode(compressed ? await inflate(text) : text);
    }
  }
  return out;
}

async function inflate(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([data as BlobPart]).stream().pipeThrough(new DecompressionStream('deflate'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** EXIF UserComment and MakerNote from a JPEG's APP1 segment. */
export function jpegExifComments(bytes: Uint8Array): { userComment?: string; makerNote?: string } {
  if (bytes[0] !== 0xff || bytes[1] !== 0xd8) return {};
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 2;
  while (pos + 4 <= bytes.length && bytes[pos] === 0xff) {
    const marker = bytes[pos + 1];
    const size = view.getUint16(pos + 2);
    if (marker === 0xe1 && String.fromCharCode(...bytes.subarray(pos + 4, pos + 8)) === 'Exif') {
      return readExif(new DataView(bytes.buffer, bytes.byteOffset + pos + 10, size - 8));
    }
    if (marker === 0xda) break;
    pos += 2 + size;
  }
  return {};
}

function readExif(tiff: DataView): { userComment?: string; makerNote?: string } {
  const little = tiff.getUint16(0) === 0x4949;
  const u16 = (o: number) => tiff.getUint16(o, little);
  const u32 = (o: number) => tiff.getUint32(o, little);
  const result: { userComment?: string; makerNote?: string } = {};
  const readIfd = (offset: number, depth: number) => {
    if (depth > 2 || offset + 2 > tiff.byteLength) return;
    const count = u16(offset);
    for (let i = 0; i < count; i++) {
      const entry = offset + 2 + i * 12;
      if (entry + 12 > tiff.byteLength) return;
      const tag = u16(entry);
      const len = u32(entry + 4);
      const dataOffset = len > 4 ? u32(entry + 8) : entry + 8;
      if (dataOffset + len > tiff.byteLength) continue;
      const raw = new Uint8Array(tiff.buffer, tiff.byteOffset + dataOffset, len);
      if (tag === 0x8769) readIfd(u32(entry + 8), depth + 1);
      else if (tag === 0x9286) result.userComment = decodeUserComment(raw, little);
      else if (tag === 0x927c) result.makerNote = decodeUserComment(raw, little);
    }
  };
  readIfd(u32(4), 0);
  return result;
}

/** EXIF comments start with an 8-byte charset id; UNICODE is UTF-16 of either byte order. */
function decodeUserComment(raw: Uint8Array, little: boolean): string {
  const head = String.fromCharCode(...raw.subarray(0, 8));
  const body = raw.subarray(8);
  if (head.startsWith('UNICODE')) {
    // Writers disagree on byte order; ASCII text shows a zero as its high byte either way.
    const bigEndian = body.length > 1 ? body[0] === 0 : !little;
    return new TextDecoder(bigEndian ? 'utf-16be' : 'utf-16le').decode(body).replace(/\0+$/, '');
  }
  if (head.startsWith('ASCII')) return new TextDecoder('latin1').decode(body).replace(/\0+$/, '');
  return new TextDecoder('utf-8').decode(raw).replace(/\0+$/, '');
}

function tryJson(text: string | undefined): unknown {
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function looksLikeMetadata(value: unknown): value is ImageMetadata {
  return typeof value === 'object' && value !== null && 'params' in value && typeof (value as ImageMetadata).params === 'object';
}

/** An exported profile or raw parameters: `{params: {...}}` with our field names, or the fields themselves. */
function paramsFromJson(value: unknown): ParamPatch | null {
  if (typeof value !== 'object' || value === null) return null;
  if (looksLikeMetadata(value) && ('models' in value || 'size' in value || 'outputs' in value)) {
    return paramsFromMetadata(value);
  }
  const candidate = ('params' in value ? (value as { params: unknown }).params : value) as Record<string, unknown>;
  if (typeof candidate !== 'object' || candidate === null) return null;
  return candidate as ParamPatch;
}

/** Parameters from a dropped or picked file: PNG, JPEG, JSON or an A1111 text file. */
export async function paramsFromFile(file: Blob & { name?: string }): Promise<ParamPatch | null> {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const chunks = await pngTextChunks(bytes);
  if (Object.keys(chunks).length > 0) {
    const meta = tryJson(chunks['maker note']);
    if (looksLikeMetadata(meta)) return paramsFromMetadata(meta);
    if (chunks.parameters) return parseA1111(chunks.parameters);
    return null;
  }
  const exif = jpegExifComments(bytes);
  if (exif.makerNote || exif.userComment) {
    const meta = tryJson(exif.makerNote);
    if (looksLikeMetadata(meta)) return paramsFromMetadata(meta);
    if (exif.userComment) return parseA1111(exif.userComment);
    return null;
  }
  const text = new TextDecoder('utf-8').decode(bytes).trim();
  if (text.startsWith('{')) return paramsFromJson(tryJson(text));
  if (text !== '' && !text.includes('\0')) return parseA1111(text);
  return null;
}
