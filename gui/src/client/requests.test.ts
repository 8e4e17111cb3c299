import { describe, expect, it } from 'vitest';
import { defaultTabParams, type TabParams } from '../state/params';
import { SERVER } from '../test/fixtures';
import { buildFiles, buildGridChain, buildImageDocument, gridValues, missingImages } from './requests';

const user = { prompt: '', scheduler: '' };
const params = (tab: Parameters<typeof defaultTabParams>[0], patch: Partial<TabParams> = {}) => ({
  ...defaultTabParams(tab, SERVER, user),
  ...patch,
});

/** The keys contract §13.2 says the GUI always puts in `params`. */
const ALWAYS = [
  'batch', 'cfg', 'control', 'correction', 'eta', 'model', 'negativePrompt', 'pipeline', 'prompt', 'scheduler',
  'seed', 'steps', 'tiled_vae', 'unet_overlap', 'unet_tile', 'upscaling', 'vae_overlap', 'vae_tile',
];

describe('buildImageDocument (layout A)', () => {
  it('txt2img: device, params with size, upscale with `enabled`, highres and experimental', () => {
    const doc = buildImageDocument('txt2img', params('txt2img', { width: 768, height: 640, prompt: 'a cat' }));
    expect(doc.device).toEqual({ platform: 'any' });
    expect(Object.keys(doc.params).sort()).toEqual([...ALWAYS, 'height', 'width'].sort());
    expect(doc.params).toMatchObject({ prompt: 'a cat', width: 768, height: 640, model: 'stable-diffusion-onnx-v1-5', pipeline: 'txt2img' });
    expect(doc.upscale).toMatchObject({ enabled: false, upscaleOrder: 'correction-first' });
    expect(doc.highres).toMatchObject({ highres: false, highresMethod: 'lanczos', highresSteps: 1 });
    expect(doc.experimental?.promptEditing.enabled).toBe(false);
    expect(doc.border).toBeUndefined();
  });

  it('img2img adds loopback, source filter and strength, and no size (the source decides it)', () => {
    const doc = buildImageDocument('img2img', params('img2img', { strength: 0.3, loopback: 2 }));
    expect(doc.params).toMatchObject({ strength: 0.3, loopback: 2, sourceFilter: 'none', pipeline: 'img2img' });
    expect(doc.params.width).toBeUndefined();
  });

  it('inpaint adds its keys, and the border only when outpainting is on', () => {
    const off = buildImageDocument('inpaint', params('inpaint'));
    expect(off.params).toMatchObject({ filter: 'none', noise: 'histogram', tileOrder: 'spiral', fillColor: '#000000' });
    expect(off.border).toBeUndefined();
    const p = params('inpaint');
    const on = buildImageDocument('inpaint', { ...p, border: { enabled: true, left: 64, right: 0, top: 8, bottom: 0 } });
    expect(on.border).toEqual({ left: 64, right: 0, top: 8, bottom: 0 });
  });

  it('upscale has no experimental group; blend has neither highres nor experimental', () => {
    expect(buildImageDocument('upscale', params('upscale')).experimental).toBeUndefined();
    // The Upscale tab's defaults ask for upscaling: its button must not send a job that does nothing.
    expect(buildImageDocument('upscale', params('upscale')).upscale).toMatchObject({ enabled: true, outscale: 2 });
    const blend = buildImageDocument('blend', params('blend'));
    expect(blend.highres).toBeUndefined();
    expect(blend.experimental).toBeUndefined();
    expect(blend.upscale).toBeDefined();
  });

  it('is plain JSON that survives a round trip unchanged', () => {
    const doc = buildImageDocument('inpaint', params('inpaint'));
    expect(JSON.parse(JSON.stringify(doc))).toEqual(doc);
  });
});

describe('files', () => {
  const a = new Blob(['a']);
  const b = new Blob(['b']);
  const m = new Blob(['m']);

  it('names the parts as the server expects per route', () => {
    expect(Object.keys(buildFiles('txt2img', { source: a }))).toEqual([]);
    expect(Object.keys(buildFiles('img2img', { source: a, mask: m }))).toEqual(['source']);
    expect(Object.keys(buildFiles('inpaint', { source: a, mask: m })).sort()).toEqual(['mask', 'source']);
    expect(Object.keys(buildFiles('upscale', { source: a }))).toEqual(['source']);
    expect(Object.keys(buildFiles('blend', { blendSources: [a, b], mask: m })).sort()).toEqual(['mask', 'source:0', 'source:1']);
  });

  it('says which required images are missing', () => {
    expect(missingImages('txt2img', {})).toEqual([]);
    expect(missingImages('img2img', {})).toEqual(['source']);
    expect(missingImages('inpaint', { source: a })).toEqual(['mask']);
    expect(missingImages('blend', { blendSources: [a, null], mask: null })).toEqual(['source:1', 'mask']);
    expect(missingImages('blend', { blendSources: [a, b], mask: m })).toEqual([]);
  });
});

describe('buildGridChain (contract §10.7)', () => {
  const grid = (patch: Partial<TabParams['grid']>) =>
    params('txt2img', {
      prompt: 'a cute __column__',
      seed: 42,
      grid: { enabled: true, columns: { parameter: 'prompt', values: 'red, blue' }, rows: { parameter: 'none', values: '' }, ...patch },
    });

  it('builds one source-txt2img stage per cell, then blend-grid and persist-disk', () => {
    const chain = buildGridChain(grid({}));
    expect(chain.stages.map((s) => [s.name, s.type])).toEqual([
      ['cell-0', 'source-txt2img'],
      ['cell-1', 'source-txt2img'],
      ['grid', 'blend-grid'],
      ['save', 'persist-disk'],
    ]);
    expect(chain.stages[0].params.prompt).toBe('a cute red');
    expect(chain.stages[1].params.prompt).toBe('a cute blue');
    expect(chain.stages[2].params).toMatchObject({ width: 2, height: 1, tiles: 8192 });
    expect(chain.stages[3].params).toEqual({ tiles: 8192 });
    expect(chain.defaults).toMatchObject({ prompt: 'a cute __column__', seed: 42, platform: 'any', model: 'stable-diffusion-onnx-v1-5' });
    expect(chain.platform).toBe('any');
  });

  it('crosses rows and columns, numbers for numeric parameters', () => {
    const chain = buildGridChain(
      grid({ columns: { parameter: 'seed', values: '1,2,3' }, rows: { parameter: 'steps', values: '5, 10' } }),
    );
    const cells = chain.stages.filter((s) => s.type === 'source-txt2img').map((s) => [s.params.seed, s.params.steps]);
    expect(cells).toEqual([[1, 5], [2, 5], [3, 5], [1, 10], [2, 10], [3, 10]]);
    expect(chain.stages.find((s) => s.type === 'blend-grid')?.params).toMatchObject({ width: 3, height: 2 });
  });

  it('replaces __row__ too, and resolves a random seed once so every cell shares it', () => {
    const p = grid({ rows: { parameter: 'prompt', values: 'cat, dog' } });
    const chain = buildGridChain({ ...p, prompt: 'a __column__ __row__', seed: -1 }, () => 0.5);
    const prompts = chain.stages.filter((s) => s.type === 'source-txt2img').map((s) => s.params.prompt);
    expect(prompts).toEqual(['a red cat', 'a blue cat', 'a red dog', 'a blue dog']);
    const seeds = new Set(chain.stages.filter((s) => s.type === 'source-txt2img').map((s) => s.params.seed));
    expect(seeds).toEqual(new Set([2 ** 30]));
  });

  it('keeps stage params to scalars with letter-only keys, as the chain schema demands', () => {
    for (const stage of buildGridChain(grid({})).stages) {
      for (const [key, value] of Object.entries(stage.params)) {
        expect(key).toMatch(/^[-_A-Za-z]+$/);
        expect(['string', 'number', 'boolean']).toContain(typeof value);
      }
    }
  });

  it('treats blank values as one cell', () => {
    expect(gridValues({ parameter: 'seed', values: ' , ' })).toEqual(['']);
    expect(gridValues({ parameter: 'none', values: '1,2' })).toEqual(['']);
  });
});
