/** The parameters a tab holds, their defaults and ranges, all taken from the server's settings. */
import { gridValues } from '../client/requests';
import type { FilterLists, ModelLists, ServerLimits, ServerParams, ServerStrings } from '../client/types';

export const JOB_TABS = ['txt2img', 'img2img', 'inpaint', 'upscale', 'blend'] as const;
/** `jobs` is shown only where the server lists jobs (`GET /api/jobs`). */
export const TABS = [...JOB_TABS, 'jobs', 'models', 'settings'] as const;
export type JobTab = (typeof JOB_TABS)[number];
export type Tab = (typeof TABS)[number];

export function isTab(value: string): value is Tab {
  return (TABS as readonly string[]).includes(value);
}

/** What the server told us at start-up; every control is built from this. */
export interface ServerInfo {
  params: ServerParams;
  models: ModelLists;
  pipelines: string[];
  platforms: string[];
  schedulers: string[];
  filters: FilterLists;
  noises: string[];
  wildcards: string[];
  strings: ServerStrings;
  /** Absent or null: the server publishes no limits (onnx-web), and uploads are checked by it alone. */
  limits?: ServerLimits | null;
}

export const EMPTY_SERVER_LISTS: Omit<ServerInfo, 'params' | 'limits'> = {
  models: { correction: [], diffusion: [], networks: [], upscaling: [] },
  pipelines: [],
  platforms: [],
  schedulers: [],
  filters: { mask: [], prompt: [], source: [] },
  noises: [],
  wildcards: [],
  strings: {},
};

export interface GridAxis {
  parameter: GridParameter;
  values: string;
}

export const GRID_PARAMETERS = ['none', 'prompt', 'seed', 'steps', 'cfg', 'scheduler', 'eta', 'model'] as const;
export type GridParameter = (typeof GRID_PARAMETERS)[number];

export interface TabParams {
  // model row
  platform: string;
  model: string;
  pipeline: string;
  upscaling: string;
  correction: string;
  control: string;
  // image parameters
  scheduler: string;
  prompt: string;
  negativePrompt: string;
  batch: number;
  cfg: number;
  eta: number;
  steps: number;
  seed: number;
  tiled_vae: boolean;
  unet_tile: number;
  unet_overlap: number;
  vae_tile: number;
  vae_overlap: number;
  width: number;
  height: number;
  // img2img
  strength: number;
  loopback: number;
  sourceFilter: string;
  // inpaint
  filter: string;
  noise: string;
  fillColor: string;
  tileOrder: string;
  fullresInpaint: boolean;
  fullresInpaintPadding: number;
  border: { enabled: boolean; left: number; right: number; top: number; bottom: number };
  highres: {
    highres: boolean;
    highresIterations: number;
    highresMethod: string;
    highresScale: number;
    highresSteps: number;
    highresStrength: number;
  };
  upscale: {
    enabled: boolean;
    upscaleOrder: string;
    denoise: number;
    scale: number;
    outscale: number;
    faces: boolean;
    faceOutscale: number;
    faceStrength: number;
  };
  experimental: {
    latentSymmetry: { enabled: boolean; gradientStart: number; gradientEnd: number; lineOfSymmetry: number };
    promptEditing: { enabled: boolean; promptFilter: string; addSuffix: string; minLength: number; removeTokens: string };
  };
  grid: { enabled: boolean; columns: GridAxis; rows: GridAxis };
}

export interface NumberSpec {
  default: number;
  min: number;
  max: number;
  step: number;
}

/**
 * Used only when the server's params.json lacks an entry (contract §12.2 values), so an older or
 * partial server still gets a working form. Every range the server sends wins.
 */
const FALLBACK_NUMBERS: Record<string, NumberSpec> = {
  batch: { default: 1, min: 1, max: 5, step: 1 },
  cfg: { default: 6, min: 0, max: 30, step: 0.1 },
  eta: { default: 0, min: 0, max: 1, step: 0.01 },
  steps: { default: 25, min: 1, max: 300, step: 1 },
  seed: { default: -1, min: -1, max: 4294967295, step: 1 },
  unet_tile: { default: 512, min: 128, max: 2048, step: 128 },
  unet_overlap: { default: 0.25, min: 0, max: 0.9, step: 0.01 },
  vae_tile: { default: 512, min: 128, max: 1024, step: 128 },
  vae_overlap: { default: 0.25, min: 0, max: 0.9, step: 0.01 },
  width: { default: 512, min: 128, max: 8192, step: 8 },
  height: { default: 512, min: 128, max: 8192, step: 8 },
  strength: { default: 0.5, min: 0, max: 1, step: 0.01 },
  loopback: { default: 0, min: 0, max: 10, step: 1 },
  fullresInpaintPadding: { default: 1.2, min: 1, max: 2, step: 0.05 },
  left: { default: 0, min: 0, max: 1024, step: 8 },
  right: { default: 0, min: 0, max: 1024, step: 8 },
  top: { default: 0, min: 0, max: 1024, step: 8 },
  bottom: { default: 0, min: 0, max: 1024, step: 8 },
  highresIterations: { default: 1, min: 1, max: 4, step: 1 },
  highresScale: { default: 1, min: 1, max: 4, step: 1 },
  highresSteps: { default: 1, min: 1, max: 500, step: 1 },
  highresStrength: { default: 0.1, min: 0, max: 1, step: 0.01 },
  denoise: { default: 0.5, min: 0, max: 1, step: 0.1 },
  scale: { default: 1, min: 1, max: 4, step: 1 },
  outscale: { default: 1, min: 1, max: 4, step: 1 },
  faceOutscale: { default: 1, min: 1, max: 4, step: 1 },
  faceStrength: { default: 0.5, min: 0, max: 1, step: 0.1 },
  'latentSymmetry.gradientStart': { default: 0, min: 0, max: 0.5, step: 0.01 },
  'latentSymmetry.gradientEnd': { default: 0.25, min: 0, max: 0.5, step: 0.01 },
  'latentSymmetry.lineOfSymmetry': { default: 0.5, min: 0, max: 1, step: 0.01 },
  'promptEditing.minLength': { default: 80, min: 1, max: 200, step: 1 },
};

function lookup(params: ServerParams, path: string): unknown {
  let node: unknown = params;
  for (const part of path.split('.')) {
    if (node === null || typeof node !== 'object') return undefined;
    node = (node as Record<string, unknown>)[part];
  }
  return node;
}

const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** The range of one numeric parameter; the default is pulled into the range (highresSteps ships 0 < min 1). */
export function numberSpec(params: ServerParams, key: string): NumberSpec {
  const fallback = FALLBACK_NUMBERS[key] ?? { default: 0, min: 0, max: 100, step: 1 };
  const entry = lookup(params, key) as Partial<NumberSpec> | undefined;
  const min = isNum(entry?.min) ? entry.min : fallback.min;
  const max = isNum(entry?.max) ? entry.max : fallback.max;
  const step = isNum(entry?.step) && entry.step > 0 ? entry.step : fallback.step;
  const def = isNum(entry?.default) ? entry.default : fallback.default;
  return { min, max, step, default: Math.min(max, Math.max(min, def)) };
}

function stringDefault(params: ServerParams, key: string, fallback: string): string {
  const entry = lookup(params, key) as { default?: unknown } | undefined;
  return typeof entry?.default === 'string' ? entry.default : fallback;
}

function boolDefault(params: ServerParams, key: string, fallback: boolean): boolean {
  const entry = lookup(params, key) as { default?: unknown } | undefined;
  return typeof entry?.default === 'boolean' ? entry.default : fallback;
}

/** The configured default when the server offers it, else the first choice, else ''. */
export function pick(choices: readonly string[], preferred: string | undefined): string {
  if (preferred !== undefined && choices.includes(preferred)) return preferred;
  return choices[0] ?? '';
}

/**
 * Pipelines each task accepts, as the server routes them (panorama on the three diffusion tabs;
 * ControlNet and pix2pix only on img2img, as in onnx-web); the tab's own pipeline comes first.
 */
const TAB_PIPELINES: Record<JobTab, string[]> = {
  txt2img: ['txt2img', 'lpw', 'panorama', 'panorama-sdxl', 'txt2img-sdxl'],
  img2img: ['img2img', 'controlnet', 'img2img-sdxl', 'lpw', 'pix2pix', 'panorama', 'panorama-sdxl'],
  inpaint: ['inpaint', 'lpw', 'panorama', 'panorama-sdxl'],
  upscale: [],
  blend: [],
};

/** The pipelines the server has that are valid for this tab, base pipeline first. */
export function pipelinesForTab(tab: JobTab, serverPipelines: string[]): string[] {
  const valid = TAB_PIPELINES[tab];
  const known = valid.filter((p) => serverPipelines.includes(p));
  // A server that lists no pipelines still runs each tab's base pipeline.
  return known.length > 0 ? known : valid.slice(0, 1);
}

/** An upscaling model's own factor, read from its name (`…-x4`, `…_x2plus`, `4x-…`); null when it says none. */
export function nativeScale(model: string): number | null {
  const match = /(?:^|[^a-z0-9])x([1-8])(?![0-9])/i.exec(model) ?? /(?:^|[^a-z0-9])([1-8])x(?![a-z0-9])/i.exec(model);
  return match ? Number(match[1]) : null;
}

/** Clamp a value into a parameter's range. */
function within(params: ServerParams, key: string, value: number): number {
  const spec = numberSpec(params, key);
  return Math.min(spec.max, Math.max(spec.min, value));
}

/**
 * Upscaling as the tab starts: off on the generation tabs; on for the Upscale tab, at the model's
 * own factor (from its name, else 2), since upscaling is the one thing that tab is for.
 */
function upscaleDefaults(tab: JobTab, params: ServerParams, upscaling: string): Pick<TabParams['upscale'], 'enabled' | 'scale' | 'outscale'> {
  const n = (key: string) => numberSpec(params, key).default;
  if (tab !== 'upscale') return { enabled: false, scale: n('scale'), outscale: n('outscale') };
  const native = nativeScale(upscaling);
  return {
    enabled: true,
    scale: native === null ? n('scale') : within(params, 'scale', native),
    outscale: within(params, 'outscale', native ?? 2),
  };
}

export interface UserDefaults {
  prompt: string;
  scheduler: string;
}

/** A tab's starting parameters: server defaults, narrowed to the choices the server offers. */
export function defaultTabParams(tab: JobTab, server: ServerInfo, user: UserDefaults): TabParams {
  const { params } = server;
  const n = (key: string) => numberSpec(params, key).default;
  const models = server.models;
  const upscaling = pick(models.upscaling, stringDefault(params, 'upscaling', ''));
  return {
    platform: pick(server.platforms, stringDefault(params, 'platform', 'any')),
    model: pick(
      models.diffusion,
      // Inpainting wants a model trained for it; prefer one when the server has it.
      (tab === 'inpaint' && models.diffusion.find((m) => /inpaint/i.test(m))) || stringDefault(params, 'model', ''),
    ),
    pipeline: pick(pipelinesForTab(tab, server.pipelines), tab),
    upscaling,
    correction: pick(models.correction, stringDefault(params, 'correction', '')),
    control: '',
    scheduler: pick(server.schedulers, user.scheduler || stringDefault(params, 'scheduler', 'euler-a')),
    prompt: user.prompt || stringDefault(params, 'prompt', ''),
    negativePrompt: stringDefault(params, 'negativePrompt', ''),
    batch: n('batch'),
    cfg: n('cfg'),
    eta: n('eta'),
    steps: n('steps'),
    seed: n('seed'),
    tiled_vae: boolDefault(params, 'tiled_vae', false),
    unet_tile: n('unet_tile'),
    unet_overlap: n('unet_overlap'),
    vae_tile: n('vae_tile'),
    vae_overlap: n('vae_overlap'),
    width: n('width'),
    height: n('height'),
    strength: n('strength'),
    loopback: n('loopback'),
    sourceFilter: pick(server.filters.source, 'none'),
    filter: pick(server.filters.mask, stringDefault(params, 'filter', 'none')),
    noise: pick(server.noises, stringDefault(params, 'noise', 'histogram')),
    fillColor: stringDefault(params, 'fillColor', '#000000'),
    tileOrder: pick(
      (lookup(params, 'tileOrder.keys') as string[] | undefined) ?? ['grid', 'spiral'],
      stringDefault(params, 'tileOrder', 'spiral'),
    ),
    fullresInpaint: boolDefault(params, 'fullresInpaint', true),
    fullresInpaintPadding: n('fullresInpaintPadding'),
    border: { enabled: false, left: n('left'), right: n('right'), top: n('top'), bottom: n('bottom') },
    highres: {
      highres: boolDefault(params, 'highres', false),
      highresIterations: n('highresIterations'),
      highresMethod: pick(choiceKeys(params, 'highresMethod'), stringDefault(params, 'highresMethod', 'lanczos')),
      highresScale: n('highresScale'),
      highresSteps: n('highresSteps'),
      highresStrength: n('highresStrength'),
    },
    upscale: {
      ...upscaleDefaults(tab, params, upscaling),
      upscaleOrder: pick(choiceKeys(params, 'upscaleOrder'), stringDefault(params, 'upscaleOrder', 'correction-first')),
      denoise: n('denoise'),
      faces: false,
      faceOutscale: n('faceOutscale'),
      faceStrength: n('faceStrength'),
    },
    experimental: {
      latentSymmetry: {
        enabled: boolDefault(params, 'latentSymmetry.enabled', false),
        gradientStart: n('latentSymmetry.gradientStart'),
        gradientEnd: n('latentSymmetry.gradientEnd'),
        lineOfSymmetry: n('latentSymmetry.lineOfSymmetry'),
      },
      promptEditing: {
        enabled: false,
        promptFilter: pick(server.filters.prompt, stringDefault(params, 'promptEditing.filter', 'none')),
        addSuffix: stringDefault(params, 'promptEditing.addSuffix', ''),
        minLength: n('promptEditing.minLength'),
        removeTokens: stringDefault(params, 'promptEditing.removeTokens', ''),
      },
    },
    grid: {
      enabled: false,
      columns: { parameter: 'seed', values: '1, 2' },
      rows: { parameter: 'none', values: '' },
    },
  };
}

/** The `keys` list of a choice parameter in params.json. */
export function choiceKeys(params: ServerParams, key: string): string[] {
  const keys = lookup(params, `${key}.keys`);
  return Array.isArray(keys) ? keys.filter((k): k is string => typeof k === 'string') : [];
}

/**
 * Lay saved values over fresh defaults, keeping only keys and types the defaults know, so a
 * profile or stored state from an older GUI cannot put a wrong type into the form.
 */
export function mergeParams<T>(defaults: T, saved: unknown): T {
  if (saved === null || typeof saved !== 'object' || Array.isArray(saved)) return defaults;
  if (defaults === null || typeof defaults !== 'object') return defaults;
  const out: Record<string, unknown> = { ...(defaults as Record<string, unknown>) };
  for (const [key, value] of Object.entries(saved as Record<string, unknown>)) {
    if (!(key in out)) continue;
    const current = out[key];
    if (current !== null && typeof current === 'object') out[key] = mergeParams(current, value);
    else if (typeof value === typeof current) out[key] = value;
  }
  return out as T;
}

export interface Size {
  width: number;
  height: number;
}

/**
 * The size of each image a request will produce (contract §7.3 `size`): the input (requested
 * size, or the source image), grown by the outpaint border, then by each highres pass, the
 * upscaler and face correction. `null` while the size is unknown (no source image yet).
 */
export function outputSize(tab: JobTab, p: TabParams, source: Size | null): Size | null {
  let size: Size;
  if (tab === 'txt2img' && p.grid.enabled) {
    // The grid joins one cell per column and row value.
    size = { width: p.width * gridValues(p.grid.columns).length, height: p.height * gridValues(p.grid.rows).length };
  } else if (tab === 'txt2img') size = { width: p.width, height: p.height };
  else if (source === null) return null;
  else size = { ...source };
  if (tab === 'inpaint' && p.border.enabled) {
    size = {
      width: size.width + p.border.left + p.border.right,
      height: size.height + p.border.top + p.border.bottom,
    };
  }
  let factor = 1;
  if (p.highres.highres && tab !== 'blend') factor *= p.highres.highresScale ** p.highres.highresIterations;
  if (p.upscale.enabled) factor *= p.upscale.outscale;
  if (p.upscale.faces) {
    factor *= p.upscale.upscaleOrder === 'correction-both' ? p.upscale.faceOutscale ** 2 : p.upscale.faceOutscale;
  }
  return { width: Math.round(size.width * factor), height: Math.round(size.height * factor) };
}

/** How many images a request produces: the batch, times the grid cells merged into one. */
export function imageCount(tab: JobTab, p: TabParams): number {
  if (tab === 'txt2img' && p.grid.enabled) return 1;
  if (tab === 'upscale' || tab === 'blend') return 1;
  return p.batch;
}

/** Choices a saved or loaded value must be one of; anything else falls back to the tab's default. */
function choiceLists(tab: JobTab, server: ServerInfo): Partial<Record<keyof TabParams, string[]>> {
  return {
    platform: server.platforms,
    model: server.models.diffusion,
    pipeline: pipelinesForTab(tab, server.pipelines),
    upscaling: server.models.upscaling,
    correction: server.models.correction,
    control: ['', ...server.models.networks.filter((n) => n.type === 'control').map((n) => n.name)],
    scheduler: server.schedulers,
    sourceFilter: server.filters.source,
    filter: server.filters.mask,
    noise: server.noises,
  };
}

/**
 * Apply a patch (stored state, a profile, a picture's metadata) to parameters: keys and types are
 * checked by `mergeParams`, then every choice is checked against what the server offers.
 */
export function applyParams(tab: JobTab, base: TabParams, patch: unknown, server: ServerInfo): TabParams {
  const merged = mergeParams(base, patch);
  const lists = choiceLists(tab, server);
  for (const [key, list] of Object.entries(lists) as Array<[keyof TabParams, string[]]>) {
    const value = merged[key];
    if (list.length > 0 && typeof value === 'string' && !list.includes(value)) {
      (merged as unknown as Record<string, unknown>)[key] = base[key];
    }
  }
  return merged;
}
