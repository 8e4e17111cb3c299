import { describe, expect, it } from 'vitest';
import type { ExtrasDocument } from '../client/types';
import {
  addEntry,
  checkExtras,
  entryName,
  fieldsOf,
  parseExtras,
  parseFieldPath,
  parseList,
  removeEntry,
  replaceEntry,
  sameJson,
  withField,
} from './extras';

const SHA = 'a'.repeat(64);
const rules = (doc: ExtrasDocument) => checkExtras(doc).map((i) => `${i.path} ${i.rule}`);

describe('the extras document', () => {
  it("names a new entry as onnx-web does: the list's prefix and the label in kebab case", () => {
    expect(entryName('diffusion', 'Dreamlike Photoreal 2.0')).toBe('diffusion-dreamlike-photoreal-2-0');
    expect(entryName('correction', 'GFPGAN v1.4')).toBe('correction-gfpgan-v1-4');
    expect(entryName('upscaling', '  Real ESRGAN x4 ')).toBe('upscaling-real-esrgan-x4');
    expect(entryName('networks', 'E2E LoRA')).toBe('e2e-lora');
    expect(entryName('sources', 'Café Noir')).toBe('cafe-noir');
    expect(entryName('diffusion', '!!!')).toBe('');
  });

  it('edits one field and keeps every key it does not know', () => {
    const entry = { name: 'a', source: 's', custom: { keep: [1, 2] }, half: true };
    expect(withField(entry, 'label', 'A')).toEqual({ ...entry, label: 'A' });
    expect(withField(entry, 'half', false)).toEqual({ name: 'a', source: 's', custom: { keep: [1, 2] } });
    expect(withField(entry, 'source', '')).toEqual({ name: 'a', custom: { keep: [1, 2] }, half: true });
    const doc: ExtrasDocument = { diffusion: [entry], strings: { en: { x: 'y' } }, other: 1 };
    const added = addEntry(doc, 'networks', { name: 'n', source: 'n.safetensors' });
    expect(added).toMatchObject({ strings: { en: { x: 'y' } }, other: 1, networks: [{ name: 'n' }] });
    expect(replaceEntry(added, 'diffusion', 0, { name: 'b' }).diffusion).toEqual([{ name: 'b' }]);
    expect(removeEntry(added, 'diffusion', 0).diffusion).toEqual([]);
    expect(doc.networks).toBeUndefined();
  });

  it("shows a network's token fields by its type", () => {
    const keys = (entry: Record<string, unknown>) => fieldsOf('networks', entry).map((f) => f.key);
    expect(keys({ type: 'lora' })).toContain('tokens');
    expect(keys({ type: 'lora' })).not.toContain('token');
    expect(keys({ type: 'inversion' })).toContain('token');
    expect(fieldsOf('networks', { type: 'lora' }).find((f) => f.key === 'model')?.options).toEqual(['cloneofsimo', 'sd-scripts']);
    expect(fieldsOf('networks', { type: 'inversion' }).find((f) => f.key === 'model')?.options).toEqual(['concept', 'embeddings']);
    expect(parseList(' a, b ,, c ')).toEqual(['a', 'b', 'c']);
  });

  it('checks required fields, numbers, sha256 digests and names used twice across lists', () => {
    expect(rules({ diffusion: [{ name: 'a', source: 's', sha256: SHA }] })).toEqual([]);
    expect(
      rules({
        diffusion: [{ name: 'a', source: ' ', sha256: 'abc' }],
        upscaling: [{ name: 'u', source: 's' }, { name: 'v', source: 's', scale: 'four' }],
        networks: [{ name: 'a', source: 's' }],
        sources: [{ source: 's' }],
      }),
    ).toEqual([
      'diffusion[0].source required',
      'diffusion[0].sha256 sha256',
      'upscaling[0].scale required',
      'upscaling[1].scale number',
      'networks[0].type required',
      'sources[0].name required',
      'diffusion[0].name duplicate',
      'networks[0].name duplicate',
    ]);
    expect(rules({ diffusion: {} as never, correction: [1 as never] })).toEqual(['diffusion list', 'correction[0] entry']);
  });

  it("maps the server's error paths onto lists, entries and fields", () => {
    expect(parseFieldPath('diffusion[1].source')).toEqual({ section: 'diffusion', index: 1, field: 'source' });
    expect(parseFieldPath('networks[0].tokens[2]')).toEqual({ section: 'networks', index: 0, field: 'tokens' });
    expect(parseFieldPath('diffusion[2]')).toEqual({ section: 'diffusion', index: 2, field: null });
    expect(parseFieldPath('upscaling')).toEqual({ section: 'upscaling', index: null, field: null });
    expect(parseFieldPath('')).toEqual({ section: null, index: null, field: null });
    expect(parseFieldPath('strings.en')).toEqual({ section: null, index: null, field: null });
  });

  it('parses raw text into an object only, and compares documents whatever their key order', () => {
    expect(parseExtras('{"diffusion": []}')).toEqual({ doc: { diffusion: [] } });
    expect(parseExtras('[1]')).toEqual({ error: 'not a JSON object' });
    expect('error' in parseExtras('{"a": ')).toBe(true);
    expect(sameJson({ a: 1, b: [1, { c: 2 }] }, { b: [1, { c: 2 }], a: 1 })).toBe(true);
    expect(sameJson({ a: 1 }, { a: 1, b: undefined })).toBe(false);
    expect(sameJson([1, 2], [2, 1])).toBe(false);
  });
});
