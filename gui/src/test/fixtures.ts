/** Server answers shaped as in spec/contract.md §5, shared by the unit tests. */
import type { ServerInfo } from '../state/params';

export const SERVER: ServerInfo = {
  params: {
    version: '0.13.0',
    motd: { en: 'hello', de: 'hallo' },
    steps: { default: 25, min: 1, max: 300, step: 1 },
    cfg: { default: 6, min: 0, max: 30, step: 0.1 },
    highresSteps: { default: 0, min: 1, max: 500, step: 1 },
    model: { default: 'stable-diffusion-onnx-v1-5', keys: [] },
    scheduler: { default: 'euler-a', keys: [] },
    platform: { default: 'amd', keys: [] },
    prompt: { default: 'an astronaut eating a hamburger', keys: [] },
    highresMethod: { default: 'lanczos', keys: ['bilinear', 'lanczos', 'upscale'] },
    upscaleOrder: { default: 'correction-first', keys: ['correction-both', 'correction-first', 'correction-last'] },
    tileOrder: { default: 'spiral', keys: ['grid', 'spiral'] },
    fillColor: { default: '#000000', keys: [] },
  },
  models: {
    correction: ['correction-codeformer'],
    diffusion: ['diffusion-demo', 'stable-diffusion-onnx-v1-5'],
    networks: [
      { name: 'canny', tokens: [], type: 'control' },
      { name: 'details', tokens: ['detailed'], type: 'lora' },
    ],
    upscaling: ['upscaling-demo'],
  },
  pipelines: ['controlnet', 'img2img', 'inpaint', 'lpw', 'txt2img', 'upscale'],
  platforms: ['any', 'cpu'],
  schedulers: ['ddim', 'euler-a'],
  filters: { mask: ['none', 'gaussian-multiply'], prompt: [], source: ['canny', 'none'] },
  noises: ['fill-edge', 'histogram'],
  wildcards: ['animals'],
  strings: {},
  // The server's defaults (service/config.py).
  limits: { maxBodyBytes: 32 * 1024 * 1024, maxImagePixels: 4096 * 4096, maxImageSide: 8192, maxOutputPixels: 8192 * 8192 },
};
