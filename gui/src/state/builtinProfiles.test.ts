import { describe, expect, it } from 'vitest';
import { en } from '../i18n/en';
import { SERVER } from '../test/fixtures';
import { BUILTIN_PREFIX, BUILTIN_PROFILES, builtinProfile } from './builtinProfiles';
import { applyParams, defaultTabParams } from './params';

const WITH_FEW_STEP = { ...SERVER, schedulers: [...SERVER.schedulers, 'lcm', 'dpm-sde'], pipelines: [...SERVER.pipelines, 'panorama', 'panorama-sdxl'] };

describe('built-in profiles', () => {
  it('each has a label and only keys the form has', () => {
    const base = defaultTabParams('txt2img', SERVER, { prompt: '', scheduler: '' });
    for (const profile of BUILTIN_PROFILES) {
      expect(en.profiles.builtin[profile.id as keyof typeof en.profiles.builtin]).toBeTruthy();
      for (const key of Object.keys(profile.params)) expect(Object.keys(base)).toContain(key);
    }
  });

  it('sets a few-step model’s scheduler, guidance and steps where the server offers them', () => {
    const base = defaultTabParams('txt2img', WITH_FEW_STEP, { prompt: 'a cat', scheduler: '' });
    const lcm = applyParams('txt2img', base, builtinProfile(`${BUILTIN_PREFIX}sd15-lcm`)?.params, WITH_FEW_STEP);
    expect(lcm).toMatchObject({ scheduler: 'lcm', steps: 8, cfg: 1.5, width: 512, height: 512, prompt: 'a cat' });
    const turbo = applyParams('txt2img', base, builtinProfile(`${BUILTIN_PREFIX}sdxl-turbo`)?.params, WITH_FEW_STEP);
    expect(turbo).toMatchObject({ scheduler: 'dpm-sde', steps: 5, cfg: 1.2 });
    const panorama = applyParams('txt2img', base, builtinProfile(`${BUILTIN_PREFIX}sdxl-panorama`)?.params, WITH_FEW_STEP);
    expect(panorama).toMatchObject({ pipeline: 'panorama-sdxl', width: 2048, height: 1024, unet_tile: 1024, unet_overlap: 0.75 });
  });

  it('keeps the form’s choice where the server lacks the profile’s, and the rest still applies', () => {
    const base = defaultTabParams('txt2img', SERVER, { prompt: '', scheduler: '' });
    const lcm = applyParams('txt2img', base, builtinProfile(`${BUILTIN_PREFIX}sd15-lcm`)?.params, SERVER);
    expect(lcm.scheduler).toBe(base.scheduler);
    expect(lcm).toMatchObject({ steps: 8, cfg: 1.5 });
    // Panorama runs on txt2img, img2img and inpaint; ControlNet only on img2img: on inpaint the tab's own stays.
    const inpaint = defaultTabParams('inpaint', WITH_FEW_STEP, { prompt: '', scheduler: '' });
    const moved = applyParams('inpaint', inpaint, builtinProfile(`${BUILTIN_PREFIX}sd15-panorama`)?.params, WITH_FEW_STEP);
    expect(moved.pipeline).toBe('panorama');
    expect(applyParams('inpaint', inpaint, { pipeline: 'controlnet' }, WITH_FEW_STEP).pipeline).toBe(inpaint.pipeline);
    const img2img = defaultTabParams('img2img', WITH_FEW_STEP, { prompt: '', scheduler: '' });
    expect(applyParams('img2img', img2img, builtinProfile(`${BUILTIN_PREFIX}sd15-panorama`)?.params, WITH_FEW_STEP).pipeline).toBe('panorama');
  });

  it('is found only by its picker value', () => {
    expect(builtinProfile('sd15')).toBeUndefined();
    expect(builtinProfile(`${BUILTIN_PREFIX}nope`)).toBeUndefined();
    expect(builtinProfile(`${BUILTIN_PREFIX}sdxl`)?.params.width).toBe(1024);
  });
});
