/**
 * Built-in parameter sets for the model families whose good settings are far from the defaults,
 * as onnx-web's GUI ships them: few-step models (LCM, SDXL Turbo) want their own scheduler, a low
 * CFG and few steps; SDXL and panoramas want their own sizes. Loading one goes through
 * `applyParams`, so a value this server does not offer (a pipeline, a scheduler) keeps the form's.
 */
import type { TabParams } from './params';

export interface BuiltinProfile {
  /** Stable id; the label is the translation `profiles.builtin.<id>`. */
  id: string;
  params: Partial<TabParams>;
}

const HIGHRES_2X: TabParams['highres'] = {
  highres: true,
  highresIterations: 1,
  highresMethod: 'upscale',
  highresScale: 2,
  highresSteps: 25,
  highresStrength: 0.5,
};

export const BUILTIN_PROFILES: readonly BuiltinProfile[] = [
  { id: 'sd15', params: { scheduler: 'ddim', steps: 25, cfg: 7, width: 512, height: 512 } },
  // An LCM-LoRA (`<lora:lcm:1.0>` in the prompt) or an LCM-distilled model: the lcm scheduler, cfg ≈ 1.5, ≈ 8 steps.
  { id: 'sd15-lcm', params: { scheduler: 'lcm', steps: 8, cfg: 1.5, width: 512, height: 512 } },
  { id: 'sd15-highres', params: { scheduler: 'ddim', steps: 25, cfg: 7, width: 512, height: 512, highres: HIGHRES_2X } },
  // Panoramas: windows of the model's own size, 3/4 overlapping (onnx-web's docs suggest 0.75 for smooth seams).
  { id: 'sd15-panorama', params: { pipeline: 'panorama', scheduler: 'ddim', steps: 25, cfg: 7, width: 1024, height: 512, unet_tile: 512, unet_overlap: 0.75 } },
  { id: 'sdxl', params: { scheduler: 'euler-a', steps: 30, cfg: 7, width: 1024, height: 1024 } },
  { id: 'sdxl-lcm', params: { scheduler: 'lcm', steps: 8, cfg: 1.5, width: 1024, height: 1024 } },
  // SDXL Turbo: trained at 512², a handful of steps, guidance almost off.
  { id: 'sdxl-turbo', params: { scheduler: 'dpm-sde', steps: 5, cfg: 1.2, width: 512, height: 512 } },
  { id: 'sdxl-panorama', params: { pipeline: 'panorama-sdxl', scheduler: 'euler-a', steps: 30, cfg: 7, width: 2048, height: 1024, unet_tile: 1024, unet_overlap: 0.75 } },
];

/** Option values of built-ins in the profile picker, apart from saved profiles' names. */
export const BUILTIN_PREFIX = 'builtin:';

export function builtinProfile(value: string): BuiltinProfile | undefined {
  if (!value.startsWith(BUILTIN_PREFIX)) return undefined;
  return BUILTIN_PROFILES.find((profile) => profile.id === value.slice(BUILTIN_PREFIX.length));
}
