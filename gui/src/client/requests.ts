/** Turn a tab's parameters into the request the server expects (contract §3.1 layout A, §10.7). */
import type { GridAxis, JobTab, TabParams } from '../state/params';
import type { ImageFiles } from './api';

/** The images a tab has gathered; which ones a route needs is decided by `missingImages`. */
export interface TabImages {
  source?: Blob | null;
  mask?: Blob | null;
  blendSources?: [Blob | null, Blob | null];
}

export interface ImageDocument {
  device: { platform: string };
  params: Record<string, string | number | boolean>;
  border?: { left: number; right: number; top: number; bottom: number };
  upscale?: TabParams['upscale'];
  highres?: TabParams['highres'];
  experimental?: TabParams['experimental'];
}

type Scalar = string | number | boolean;

export interface ChainStage {
  name: string;
  type: string;
  params: Record<string, Scalar>;
}

export interface ChainDocument {
  defaults: Record<string, Scalar>;
  platform: string;
  stages: ChainStage[];
}

/** Which required images are still missing; the Generate button stays disabled until this is empty. */
export function missingImages(tab: JobTab, images: TabImages): string[] {
  switch (tab) {
    case 'img2img':
    case 'upscale':
      return images.source ? [] : ['source'];
    case 'inpaint':
      return [...(images.source ? [] : ['source']), ...(images.mask ? [] : ['mask'])];
    case 'blend': {
      const [a, b] = images.blendSources ?? [null, null];
      return [...(a ? [] : ['source:0']), ...(b ? [] : ['source:1']), ...(images.mask ? [] : ['mask'])];
    }
    default:
      return [];
  }
}

/** The parameters every image route takes (contract §13.2 "always"). */
function baseParams(p: TabParams): Record<string, Scalar> {
  return {
    model: p.model,
    pipeline: p.pipeline,
    upscaling: p.upscaling,
    correction: p.correction,
    control: p.control,
    batch: p.batch,
    cfg: p.cfg,
    eta: p.eta,
    steps: p.steps,
    tiled_vae: p.tiled_vae,
    unet_overlap: p.unet_overlap,
    unet_tile: p.unet_tile,
    vae_overlap: p.vae_overlap,
    vae_tile: p.vae_tile,
    scheduler: p.scheduler,
    seed: p.seed,
    prompt: p.prompt,
    negativePrompt: p.negativePrompt,
  };
}

/** The route-specific additions to `params`. */
function tabParams(tab: JobTab, p: TabParams): Record<string, Scalar> {
  switch (tab) {
    case 'txt2img':
      return { width: p.width, height: p.height };
    case 'img2img':
      return { loopback: p.loopback, sourceFilter: p.sourceFilter, strength: p.strength };
    case 'inpaint':
      return {
        filter: p.filter,
        noise: p.noise,
        strength: p.strength,
        fillColor: p.fillColor,
        tileOrder: p.tileOrder,
        fullresInpaint: p.fullresInpaint,
        fullresInpaintPadding: p.fullresInpaintPadding,
      };
    default:
      return {};
  }
}

/** The nested `json` document for an image route (txt2img, img2img, inpaint, upscale, blend). */
export function buildImageDocument(tab: JobTab, p: TabParams): ImageDocument {
  const doc: ImageDocument = {
    device: { platform: p.platform },
    params: { ...baseParams(p), ...tabParams(tab, p) },
    upscale: { ...p.upscale },
  };
  if (tab === 'inpaint' && p.border.enabled) {
    const { left, right, top, bottom } = p.border;
    doc.border = { left, right, top, bottom };
  }
  if (tab !== 'blend') doc.highres = { ...p.highres };
  if (tab !== 'upscale' && tab !== 'blend') {
    doc.experimental = {
      latentSymmetry: { ...p.experimental.latentSymmetry },
      promptEditing: { ...p.experimental.promptEditing },
    };
  }
  return doc;
}

/** The file parts a route takes, named as the server expects (contract §3.5). */
export function buildFiles(tab: JobTab, images: TabImages): ImageFiles {
  const files: ImageFiles = {};
  if ((tab === 'img2img' || tab === 'inpaint' || tab === 'upscale') && images.source) files.source = images.source;
  if ((tab === 'inpaint' || tab === 'blend') && images.mask) files.mask = images.mask;
  if (tab === 'blend') {
    const [a, b] = images.blendSources ?? [null, null];
    if (a) files['source:0'] = a;
    if (b) files['source:1'] = b;
  }
  return files;
}

/** Split a grid axis' comma-separated values, dropping blanks; `none` gives one empty cell. */
export function gridValues(axis: GridAxis): string[] {
  if (axis.parameter === 'none') return [''];
  const values = axis.values
    .split(',')
    .map((v) => v.trim())
    .filter((v) => v !== '');
  return values.length > 0 ? values : [''];
}

const NUMERIC_GRID_PARAMETERS = new Set(['seed', 'steps', 'cfg', 'eta']);

/** The stage params one grid axis value sets: a number, a name, or `__column__`/`__row__` in the prompt. */
function axisParams(axis: GridAxis, value: string, token: string, prompt: string): Record<string, Scalar> {
  switch (axis.parameter) {
    case 'none':
      return {};
    case 'prompt':
      return { prompt: prompt.split(token).join(value) };
    default:
      return { [axis.parameter]: NUMERIC_GRID_PARAMETERS.has(axis.parameter) ? Number(value) : value };
  }
}

/** A random seed in the range the server accepts, the same for every cell so cells compare. */
export function randomSeed(random: () => number = Math.random): number {
  return Math.floor(random() * 2 ** 31);
}

/**
 * Grid mode: one `source-txt2img` stage per cell, a `blend-grid` stage and a `persist-disk` stage
 * (contract §10.7). Stage params must be scalars, so every group is flattened into each stage;
 * the server does not merge `defaults` into stages, so each stage carries everything.
 */
export function buildGridChain(p: TabParams, random: () => number = Math.random): ChainDocument {
  const seed = p.seed === -1 ? randomSeed(random) : p.seed;
  const flat: Record<string, Scalar> = {
    platform: p.platform,
    ...baseParams(p),
    seed,
    width: p.width,
    height: p.height,
    upscale: p.upscale.enabled,
    upscaleOrder: p.upscale.upscaleOrder,
    denoise: p.upscale.denoise,
    scale: p.upscale.scale,
    outscale: p.upscale.outscale,
    faces: p.upscale.faces,
    faceOutscale: p.upscale.faceOutscale,
    faceStrength: p.upscale.faceStrength,
    ...p.highres,
  };
  const tiles = { tiles: 8192 };
  const columns = gridValues(p.grid.columns);
  const rows = gridValues(p.grid.rows);
  const stages: ChainStage[] = [];
  for (const row of rows) {
    for (const column of columns) {
      const withColumn = { ...flat, ...axisParams(p.grid.columns, column, '__column__', p.prompt) };
      const cellPrompt = String(withColumn.prompt);
      stages.push({
        name: `cell-${stages.length}`,
        type: 'source-txt2img',
        params: { ...withColumn, ...axisParams(p.grid.rows, row, '__row__', cellPrompt), ...tiles },
      });
    }
  }
  stages.push({
    name: 'grid',
    type: 'blend-grid',
    params: { ...flat, width: columns.length, height: rows.length, ...tiles },
  });
  stages.push({ name: 'save', type: 'persist-disk', params: { ...tiles } });
  return { defaults: flat, platform: p.platform, stages };
}
