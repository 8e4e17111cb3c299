import { describe, expect, it } from 'vitest';
import { deflateSync } from 'node:zlib';
import { jpegExifComments, paramsFromFile, paramsFromMetadata, parseA1111, pngTextChunks, schedulerFromSampler } from './metadata';

const A1111 = `a castle on a hill, (masterpiece:1.2)
second line
Negative prompt: blurry, "bad"
Steps: 30, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 1234, Size: 640x512, Model hash: abc, Model: diffusion-demo, Lora hashes: "details: 4C0A, other: 1"`;

function crc32(buf: Uint8Array): number {
  let c = ~0;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return ~c >>> 0;
}

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  out.set(new TextEncoder().encode(type), 4);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

const concat = (...parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
};

const latin1 = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0));

function png(chunks: Uint8Array[]): Uint8Array {
  const ihdr = new Uint8Array(13);
  new DataView(ihdr.buffer).setUint32(0, 1);
  new DataView(ihdr.buffer).setUint32(4, 1);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return concat(
    Uint8Array.from([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk('IHDR', ihdr),
    ...chunks,
    chunk('IDAT', new Uint8Array(deflateSync(Buffer.from([0, 0, 0, 0])))),
    chunk('IEND', new Uint8Array()),
  );
}

const META = {
  input_size: { width: 512, height: 768 },
  outputs: ['txt2img_1_x_2_0.png'],
  params: {
    model: 'diffusion-demo', pipeline: 'txt2img', scheduler: 'ddim', prompt: 'a cat', input_prompt: 'a __animals__',
    negative_prompt: null, cfg: 7, seed: 99, steps: 12, eta: 0, batch: 1, tiled_vae: false,
  },
  models: [{ name: 'diffusion-demo', hash: 'unknown', weight: 1 }],
  highres: { enabled: true, iterations: 1, method: 'lanczos', scale: 2, steps: 25, strength: 0.2 },
  upscale: { upscale_model: 'upscaling-demo', upscale: true, outscale: 2, faces: false, upscale_order: 'correction-first' },
  size: { width: 1024, height: 1536 },
};

describe('A1111 parameters', () => {
  it('reads prompt, negative prompt and settings, quoted values included', () => {
    expect(parseA1111(A1111)).toEqual({
      prompt: 'a castle on a hill, (masterpiece:1.2)\nsecond line',
      negativePrompt: 'blurry, "bad"',
      steps: 30,
      cfg: 7.5,
      seed: 1234,
      scheduler: 'dpm-multi',
      model: 'diffusion-demo',
      width: 640,
      height: 512,
    });
  });

  it('maps sampler names to schedulers and passes ours through', () => {
    expect(schedulerFromSampler('Euler a')).toBe('euler-a');
    expect(schedulerFromSampler('euler-a')).toBe('euler-a');
    expect(schedulerFromSampler('UniPC')).toBe('unipc-multi');
  });

  it('takes a bare prompt as just a prompt', () => {
    expect(parseA1111('just words')).toEqual({ prompt: 'just words' });
  });
});

describe('our metadata', () => {
  it('prefers the prompt as typed, and reads highres and upscale groups', () => {
    const p = paramsFromMetadata(META);
    expect(p).toMatchObject({ prompt: 'a __animals__', model: 'diffusion-demo', scheduler: 'ddim', cfg: 7, seed: 99, steps: 12, width: 512, height: 768, upscaling: 'upscaling-demo' });
    expect(p.negativePrompt).toBeUndefined();
    expect(p.highres).toEqual({ highres: true, highresIterations: 1, highresMethod: 'lanczos', highresScale: 2, highresSteps: 25, highresStrength: 0.2 });
    expect(p.upscale).toMatchObject({ enabled: true, outscale: 2, faces: false, upscaleOrder: 'correction-first' });
  });
});

describe('files', () => {
  it('reads tEXt, zTXt and iTXt chunks from a PNG', async () => {
    const bytes = png([
      chunk('tEXt', latin1('parameters\0hello')),
      chunk('zTXt', concat(latin1('comp\0\0'), new Uint8Array(deflateSync(Buffer.from('squeezed'))))),
      chunk('iTXt', concat(latin1('maker note\0\0\0en\0\0'), new TextEncoder().encode('{"ü": 1}'))),
    ]);
    expect(await pngTextChunks(bytes)).toEqual({ parameters: 'hello', comp: 'squeezed', 'maker note': '{"ü": 1}' });
  });

  it("loads a PNG's maker note before its A1111 parameters", async () => {
    const both = png([chunk('tEXt', latin1(`parameters\0${A1111}`)), chunk('tEXt', latin1(`maker note\0${JSON.stringify(META)}`))]);
    expect((await paramsFromFile(new Blob([both as BlobPart])))?.seed).toBe(99);
    const a1111 = png([chunk('tEXt', latin1(`parameters\0${A1111}`))]);
    expect((await paramsFromFile(new Blob([a1111 as BlobPart])))?.seed).toBe(1234);
  });

  it('reads a JPEG EXIF UserComment in UNICODE (big-endian TIFF)', async () => {
    const text = 'a dog\nNegative prompt: \nSteps: 9, Sampler: Euler, CFG scale: 5, Seed: 7, Size: 256x256';
    const utf16 = new Uint8Array(text.length * 2);
    for (let i = 0; i < text.length; i++) utf16[i * 2 + 1] = text.charCodeAt(i);
    const comment = concat(latin1('UNICODE\0'), utf16);
    // TIFF: header, IFD0 with one ExifIFD pointer, Exif IFD with one UserComment entry, then the data.
    const tiff = new Uint8Array(8 + 18 + 18 + comment.length);
    const v = new DataView(tiff.buffer);
    tiff.set(latin1('MM'), 0);
    v.setUint16(2, 42);
    v.setUint32(4, 8);
    v.setUint16(8, 1);
    v.setUint16(10, 0x8769);
    v.setUint16(12, 4);
    v.setUint32(14, 1);
    v.setUint32(18, 26);
    v.setUint16(26, 1);
    v.setUint16(28, 0x9286);
    v.setUint16(30, 7);
    v.setUint32(32, comment.length);
    v.setUint32(36, 44);
    tiff.set(comment, 44);
    const app1 = concat(latin1('Exif\0\0'), tiff);
    const seg = new Uint8Array(4);
    seg.set([0xff, 0xe1]);
    new DataView(seg.buffer).setUint16(2, app1.length + 2);
    const jpeg = concat(Uint8Array.from([0xff, 0xd8]), seg, app1, Uint8Array.from([0xff, 0xda, 0, 2]));
    expect(jpegExifComments(jpeg).userComment).toBe(text);
    expect(await paramsFromFile(new Blob([jpeg as BlobPart]))).toMatchObject({ prompt: 'a dog', steps: 9, scheduler: 'euler', seed: 7, width: 256 });
  });

  it('loads an exported profile, a metadata sidecar and nothing from noise', async () => {
    const profile = new Blob([JSON.stringify({ params: { steps: 3, prompt: 'x' } })]);
    expect(await paramsFromFile(profile)).toEqual({ steps: 3, prompt: 'x' });
    expect((await paramsFromFile(new Blob([JSON.stringify(META)])))?.prompt).toBe('a __animals__');
    expect(await paramsFromFile(new Blob([new Uint8Array([0, 1, 2, 0])]))).toBeNull();
  });
});
