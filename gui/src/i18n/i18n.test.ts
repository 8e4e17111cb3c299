import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { de } from './de';
import { en } from './en';
import { CLIENT_RULES } from '../state/extras';
import { chooseLanguage, createTranslator, labelFor } from './index';

function keys(messages: object, prefix = ''): string[] {
  return Object.entries(messages).flatMap(([k, v]) => (typeof v === 'string' ? [`${prefix}${k}`] : keys(v, `${prefix}${k}.`)));
}

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return sources(path);
    return /\.tsx?$/.test(name) && !name.includes('.test.') ? [path] : [];
  });
}

describe('bundles', () => {
  it('German has exactly the English keys, and no empty strings', () => {
    expect(keys(de).sort()).toEqual(keys(en).sort());
    for (const key of keys(de)) expect(createTranslator('de')(key)).not.toBe('');
  });

  it('has every literal key the code asks for', () => {
    const known = new Set(keys(en));
    const used = new Set<string>();
    for (const file of sources(join(__dirname, '..'))) {
      for (const m of readFileSync(file, 'utf8').matchAll(/\bt\(\s*'([a-zA-Z0-9_.:-]+)'/g)) used.add(m[1]);
    }
    expect(used.size).toBeGreaterThan(100);
    expect([...used].filter((k) => !known.has(k))).toEqual([]);
  });

  it('has every key built from a template in the code', () => {
    const known = new Set(keys(en));
    const families = {
      tab: ['txt2img', 'img2img', 'inpaint', 'upscale', 'blend', 'jobs', 'models', 'settings'],
      // The reasons a failed job reports (a status record's `reason`).
      reason: ['error', 'storage', 'cancelled', 'oom'],
      output: ['generate', 'upscale'],
      jobs: ['empty', 'noneWithStatus'],
      status: ['pending', 'running', 'success', 'failed', 'cancelled', 'unknown'],
      'grid.parameter': ['none', 'prompt', 'seed', 'steps', 'cfg', 'scheduler', 'eta', 'model'],
      'image.field': ['source', 'mask', 'source:0', 'source:1'],
      'settings.themes': ['system', 'light', 'dark'],
      param: ['left', 'right', 'top', 'bottom'],
      // The Models tab: list titles, extras fields and rules, conversion and store states.
      models: ['diffusion', 'correction', 'upscaling', 'networks', 'sources'],
      'models.field': ['name', 'label', 'source', 'format', 'pipeline', 'version', 'prediction', 'sha256', 'hash', 'half', 'model', 'scale', 'type', 'tokens', 'token', 'weight', 'dest'],
      'models.rule': [...CLIENT_RULES],
      'models.conversionState': ['pending', 'running', 'success', 'failed', 'cancelled'],
      'models.stage': ['download', 'convert', 'publish'],
      'models.store.state': ['publishing', 'ready', 'deleting'],
    };
    for (const [prefix, names] of Object.entries(families)) {
      for (const name of names) expect(known.has(`${prefix}.${name}`), `${prefix}.${name}`).toBe(true);
    }
    for (const which of ['columns', 'rows']) {
      expect(known.has(`grid.${which}Parameter`)).toBe(true);
      expect(known.has(`grid.${which}Values`)).toBe(true);
    }
  });
});

describe('translate', () => {
  it('interpolates and falls back to English, then to the key', () => {
    const t = createTranslator('de', { de: { translation: { only: { en: 'x' } } } });
    expect(t('card.queued', { position: 2, total: 5 })).toBe('Platz 2 von 5 in der Warteschlange');
    expect(t('no.such.key')).toBe('no.such.key');
  });

  it("merges the server's strings over the bundled ones, dotted model names included", () => {
    const server = {
      en: { translation: { model: { 'diffusion-demo': 'Demo model', 'lora.details': 'Detail Tweaker' }, tab: { blend: 'Mix' } } },
      de: { translation: { model: { 'diffusion-demo': 'Demomodell' } } },
    };
    const en = createTranslator('en', server);
    const de = createTranslator('de', server);
    expect(labelFor(en, 'model', 'diffusion-demo')).toBe('Demo model');
    expect(labelFor(de, 'model', 'diffusion-demo')).toBe('Demomodell');
    expect(labelFor(de, 'model', 'lora.details')).toBe('Detail Tweaker');
    expect(labelFor(en, 'model', 'unlabelled')).toBe('unlabelled');
    expect(en('tab.blend')).toBe('Mix');
    expect(de('tab.blend')).toBe('Überblenden');
  });

  it('chooses ?lng=, then the saved language, then the browser, then English', () => {
    expect(chooseLanguage('de', 'en', ['en-US'])).toBe('de');
    expect(chooseLanguage('', 'de', ['en-US'])).toBe('de');
    expect(chooseLanguage('', '', ['fr-FR', 'de-AT'])).toBe('de');
    expect(chooseLanguage('xx', '', ['fr'])).toBe('en');
  });
});
