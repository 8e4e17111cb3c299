import { describe, expect, it } from 'vitest';
import { SERVER } from '../test/fixtures';
import { applyParams, defaultTabParams, imageCount, mergeParams, nativeScale, numberSpec, outputSize, pipelinesForTab } from './params';

const user = { prompt: '', scheduler: '' };

describe('numberSpec', () => {
  it("takes min, max, step and default from the server's params", () => {
    expect(numberSpec(SERVER.params, 'cfg')).toEqual({ default: 6, min: 0, max: 30, step: 0.1 });
  });

  it('pulls a default that lies outside its own range into it (highresSteps ships 0 with min 1)', () => {
    expect(numberSpec(SERVER.params, 'highresSteps').default).toBe(1);
  });

  it('falls back to the contract values for an entry the server lacks', () => {
    expect(numberSpec(SERVER.params, 'vae_tile')).toEqual({ default: 512, min: 128, max: 1024, step: 128 });
    expect(numberSpec({ version: '1', steps: { default: 10, min: 2, max: 50 } }, 'steps')).toEqual({ default: 10, min: 2, max: 50, step: 1 });
  });
});

describe('defaultTabParams', () => {
  it("uses the server's defaults where it offers them, else its first choice", () => {
    const p = defaultTabParams('txt2img', SERVER, user);
    expect(p.model).toBe('stable-diffusion-onnx-v1-5');
    expect(p.scheduler).toBe('euler-a');
    expect(p.platform).toBe('any'); // params.json says "amd", which is no platform
    expect(p.prompt).toBe('an astronaut eating a hamburger');
    expect(p.steps).toBe(25);
    expect(p.sourceFilter).toBe('none');
    expect(p.upscaling).toBe('upscaling-demo');
  });

  it('prefers an inpainting model on the inpaint tab', () => {
    const server = { ...SERVER, models: { ...SERVER.models, diffusion: [...SERVER.models.diffusion, 'stable-diffusion-onnx-v1-inpainting'] } };
    expect(defaultTabParams('inpaint', server, user).model).toBe('stable-diffusion-onnx-v1-inpainting');
    expect(defaultTabParams('txt2img', server, user).model).toBe('stable-diffusion-onnx-v1-5');
    expect(defaultTabParams('inpaint', SERVER, user).model).toBe('stable-diffusion-onnx-v1-5');
  });

  it('lets the user defaults from Settings win', () => {
    const p = defaultTabParams('img2img', SERVER, { prompt: 'mine', scheduler: 'ddim' });
    expect(p.prompt).toBe('mine');
    expect(p.scheduler).toBe('ddim');
    expect(p.pipeline).toBe('img2img');
  });
});

describe('the Upscale tab', () => {
  it("starts switched on, at the model's own factor, so Upscale upscales without opening anything", () => {
    const x4 = { ...SERVER, models: { ...SERVER.models, upscaling: ['upscaling-stable-diffusion-x4'] } };
    expect(defaultTabParams('upscale', x4, user).upscale).toMatchObject({ enabled: true, scale: 4, outscale: 4 });
    // A model whose name gives no factor: twice the size, the model scale as the server says.
    expect(defaultTabParams('upscale', SERVER, user).upscale).toMatchObject({ enabled: true, scale: 1, outscale: 2 });
    expect(outputSize('upscale', defaultTabParams('upscale', x4, user), { width: 96, height: 64 })).toEqual({ width: 384, height: 256 });
    // The generation tabs keep upscaling off until asked for.
    expect(defaultTabParams('txt2img', x4, user).upscale).toMatchObject({ enabled: false, scale: 1, outscale: 1 });
  });

  it('reads the factor from the usual model names', () => {
    expect(nativeScale('upscaling-real-esrgan-x4-plus')).toBe(4);
    expect(nativeScale('RealESRGAN_x2plus')).toBe(2);
    expect(nativeScale('4x-UltraSharp')).toBe(4);
    expect(nativeScale('upscaling-demo')).toBeNull();
    expect(nativeScale('swinir-x16')).toBeNull();
  });
});

describe('pipelinesForTab', () => {
  it('offers only the pipelines valid for the task, base first, that the server has', () => {
    expect(pipelinesForTab('txt2img', SERVER.pipelines)).toEqual(['txt2img', 'lpw']);
    expect(pipelinesForTab('img2img', SERVER.pipelines)).toEqual(['img2img', 'controlnet', 'lpw']);
    expect(pipelinesForTab('inpaint', [])).toEqual(['inpaint']);
  });

  it('offers panorama on txt2img, img2img and inpaint, as the server runs it', () => {
    const listed = ['img2img', 'inpaint', 'lpw', 'panorama', 'panorama-sdxl', 'txt2img'];
    expect(pipelinesForTab('txt2img', listed)).toEqual(['txt2img', 'lpw', 'panorama', 'panorama-sdxl']);
    expect(pipelinesForTab('img2img', listed)).toEqual(['img2img', 'lpw', 'panorama', 'panorama-sdxl']);
    expect(pipelinesForTab('inpaint', listed)).toEqual(['inpaint', 'lpw', 'panorama', 'panorama-sdxl']);
  });

  it('offers ControlNet and pix2pix on img2img only, where the server runs them', () => {
    const listed = ['controlnet', 'img2img', 'inpaint', 'pix2pix', 'txt2img'];
    expect(pipelinesForTab('img2img', listed)).toEqual(['img2img', 'controlnet', 'pix2pix']);
    expect(pipelinesForTab('inpaint', listed)).toEqual(['inpaint']);
    expect(pipelinesForTab('txt2img', listed)).toEqual(['txt2img']);
  });
});

describe('mergeParams and applyParams', () => {
  const base = defaultTabParams('txt2img', SERVER, user);

  it('keeps only known keys of the right type, recursively', () => {
    const merged = mergeParams(base, { steps: 9, cfg: 'high', bogus: 1, highres: { highres: true, highresScale: '2' } });
    expect(merged.steps).toBe(9);
    expect(merged.cfg).toBe(base.cfg);
    expect('bogus' in merged).toBe(false);
    expect(merged.highres.highres).toBe(true);
    expect(merged.highres.highresScale).toBe(base.highres.highresScale);
  });

  it('refuses a choice the server does not offer', () => {
    const p = applyParams('txt2img', base, { model: 'gone-model', scheduler: 'ddim', pipeline: 'pix2pix' }, SERVER);
    expect(p.model).toBe(base.model);
    expect(p.scheduler).toBe('ddim');
    expect(p.pipeline).toBe('txt2img');
  });

  it('ignores junk', () => {
    expect(applyParams('txt2img', base, null, SERVER)).toEqual(base);
    expect(applyParams('txt2img', base, [1, 2], SERVER)).toEqual(base);
  });
});

describe('outputSize', () => {
  const p = defaultTabParams('txt2img', SERVER, user);

  it('is the requested size for txt2img, grown by highres and upscaling', () => {
    expect(outputSize('txt2img', p, null)).toEqual({ width: 512, height: 512 });
    const big = { ...p, highres: { ...p.highres, highres: true, highresScale: 2, highresIterations: 2 }, upscale: { ...p.upscale, enabled: true, outscale: 2 } };
    expect(outputSize('txt2img', big, null)).toEqual({ width: 4096, height: 4096 });
  });

  it('needs the source for the other tabs, and adds the outpaint border', () => {
    expect(outputSize('img2img', p, null)).toBeNull();
    expect(outputSize('img2img', p, { width: 300, height: 200 })).toEqual({ width: 300, height: 200 });
    const out = { ...p, border: { enabled: true, left: 64, right: 64, top: 0, bottom: 32 } };
    expect(outputSize('inpaint', out, { width: 512, height: 512 })).toEqual({ width: 640, height: 544 });
  });

  it('squares the face scale for correction-both, and ignores highres on blend', () => {
    const faces = { ...p, upscale: { ...p.upscale, faces: true, faceOutscale: 2, upscaleOrder: 'correction-both' } };
    expect(outputSize('upscale', faces, { width: 100, height: 100 })).toEqual({ width: 400, height: 400 });
    const hr = { ...p, highres: { ...p.highres, highres: true, highresScale: 2 } };
    expect(outputSize('blend', hr, { width: 100, height: 100 })).toEqual({ width: 100, height: 100 });
  });

  it('is the whole grid in grid mode', () => {
    const grid = { ...p, grid: { enabled: true, columns: { parameter: 'seed' as const, values: '1, 2, 3' }, rows: { parameter: 'steps' as const, values: '5, 10' } } };
    expect(outputSize('txt2img', grid, null)).toEqual({ width: 1536, height: 1024 });
  });

  it('counts the batch, and one image for a grid', () => {
    expect(imageCount('txt2img', { ...p, batch: 3 })).toBe(3);
    expect(imageCount('txt2img', { ...p, batch: 3, grid: { ...p.grid, enabled: true } })).toBe(1);
  });
});
