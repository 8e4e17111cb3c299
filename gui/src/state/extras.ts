/**
 * The extras document (onnx-web's model catalogue) as the Models tab edits it: the fields of each
 * list, new entry names, the checks made before saving, and the server's error paths.
 */
import { EXTRAS_SECTIONS, type ExtrasDocument, type ExtrasEntry, type ExtrasSection } from '../client/types';

const FORMATS = ['safetensors', 'ckpt', 'onnx', 'zip', 'bin', 'pt', 'pth'] as const;
const PIPELINES = [
  'txt2img',
  'txt2img-sdxl',
  'img2img',
  'inpaint',
  'panorama',
  'pix2pix',
  'controlnet',
  'upscale',
  'archive',
  'lpw',
  'txt2img-legacy',
] as const;
const VERSIONS = ['v1', 'v2', 'v2.1'] as const;
const PREDICTIONS = ['epsilon', 'v_prediction'] as const;
const NETWORK_TYPES = ['lora', 'inversion'] as const;
/** The converters of each network type. */
const NETWORK_MODELS: Record<string, readonly string[]> = {
  lora: ['cloneofsimo', 'sd-scripts'],
  inversion: ['concept', 'embeddings'],
};

export type FieldKind = 'text' | 'select' | 'number' | 'bool' | 'list';

export interface FieldSpec {
  key: string;
  kind: FieldKind;
  options?: readonly string[];
  required?: boolean;
}

const NAME: FieldSpec = { key: 'name', kind: 'text', required: true };
const LABEL: FieldSpec = { key: 'label', kind: 'text' };
const SOURCE: FieldSpec = { key: 'source', kind: 'text', required: true };
const FORMAT: FieldSpec = { key: 'format', kind: 'select', options: FORMATS };
const SHA256: FieldSpec = { key: 'sha256', kind: 'text' };

const SECTION_FIELDS: Record<Exclude<ExtrasSection, 'networks'>, FieldSpec[]> = {
  diffusion: [
    FORMAT,
    { key: 'pipeline', kind: 'select', options: PIPELINES },
    { key: 'version', kind: 'select', options: VERSIONS },
    { key: 'prediction', kind: 'select', options: PREDICTIONS },
    SHA256,
    { key: 'hash', kind: 'text' },
    { key: 'half', kind: 'bool' },
  ],
  correction: [{ key: 'model', kind: 'select', options: ['gfpgan', 'codeformer'] }, FORMAT, SHA256],
  upscaling: [
    { key: 'model', kind: 'select', options: ['bsrgan', 'resrgan', 'swinir'] },
    { key: 'scale', kind: 'number', required: true },
    FORMAT,
    SHA256,
  ],
  sources: [{ key: 'dest', kind: 'text' }, FORMAT],
};

/** A network's fields follow its type: a LoRA has a token list, an inversion one token. */
function networkFields(entry: ExtrasEntry): FieldSpec[] {
  const type = typeof entry.type === 'string' ? entry.type : '';
  const models = NETWORK_MODELS[type] ?? Object.values(NETWORK_MODELS).flat();
  const tokens: FieldSpec[] =
    type === 'lora' ? [{ key: 'tokens', kind: 'list' }] : type === 'inversion' ? [{ key: 'token', kind: 'text' }] : [];
  return [
    { key: 'type', kind: 'select', options: NETWORK_TYPES, required: true },
    { key: 'model', kind: 'select', options: models },
    ...tokens,
    { key: 'weight', kind: 'number' },
    FORMAT,
    SHA256,
  ];
}

/** Every field the editor shows for an entry of a list, in order. */
export function fieldsOf(section: ExtrasSection, entry: ExtrasEntry): FieldSpec[] {
  return [NAME, LABEL, SOURCE, ...(section === 'networks' ? networkFields(entry) : SECTION_FIELDS[section])];
}

/** Lower-case words joined by hyphens: "E2E LoRA" → "e2e-lora". */
export function kebab(label: string): string {
  return label
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
}

/** The name onnx-web gives a new entry: its list as a prefix (none for networks and sources). */
export function entryName(section: ExtrasSection, label: string): string {
  const base = kebab(label);
  if (base === '' || section === 'networks' || section === 'sources') return base;
  return `${section}-${base}`;
}

/** The entries of a list; anything that is not a list of objects counts as none (a check says so). */
export function entriesOf(doc: ExtrasDocument, section: ExtrasSection): ExtrasEntry[] {
  const list = doc[section];
  return Array.isArray(list) ? list.filter((e): e is ExtrasEntry => isObject(e)) : [];
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** Set one field, keeping every other key; an empty value (or a flag turned off) removes the field. */
export function withField(entry: ExtrasEntry, key: string, value: unknown): ExtrasEntry {
  const next = { ...entry };
  if (value === undefined || value === '' || value === false) delete next[key];
  else next[key] = value;
  return next;
}

function withList(doc: ExtrasDocument, section: ExtrasSection, list: ExtrasEntry[]): ExtrasDocument {
  return { ...doc, [section]: list };
}

export function replaceEntry(doc: ExtrasDocument, section: ExtrasSection, index: number, entry: ExtrasEntry): ExtrasDocument {
  return withList(doc, section, entriesOf(doc, section).map((e, i) => (i === index ? entry : e)));
}

export function addEntry(doc: ExtrasDocument, section: ExtrasSection, entry: ExtrasEntry): ExtrasDocument {
  return withList(doc, section, [...entriesOf(doc, section), entry]);
}

export function removeEntry(doc: ExtrasDocument, section: ExtrasSection, index: number): ExtrasDocument {
  return withList(doc, section, entriesOf(doc, section).filter((_, i) => i !== index));
}

/** The text of a comma-separated list field, and back. */
export const listText = (value: unknown): string => (Array.isArray(value) ? value.map(String).join(', ') : '');
export const parseList = (text: string): string[] =>
  text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');

export type ParsedExtras = { doc: ExtrasDocument } | { error: string };

/** Parse the raw text: it must be a JSON object. */
export function parseExtras(text: string): ParsedExtras {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { error: (err as Error).message };
  }
  return isObject(value) ? { doc: value as ExtrasDocument } : { error: 'not a JSON object' };
}

/** Whether two JSON values are equal, whatever the order of their keys. */
export function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((v, i) => sameJson(v, b[i]));
  }
  if (!isObject(a) || !isObject(b)) return false;
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => k in b && sameJson(a[k], b[k]));
}

/**
 * A problem with the document: at an entry's field, at an entry (`field` null), at a list
 * (`index` null) or the whole document (`section` null). `rule` is a client rule code
 * (`required`, `duplicate`, `sha256`, `number`, `list`, `entry`) or the server's own words.
 */
export interface Issue {
  section: ExtrasSection | null;
  index: number | null;
  field: string | null;
  rule: string;
  /** The path as the server writes it (`diffusion[1].source`), for the summary. */
  path: string;
  /** From the server's 400 rather than the checks made here. */
  server?: boolean;
}

/** The rule codes the client checks use; their texts are `models.rule.<code>`. */
export const CLIENT_RULES = ['required', 'duplicate', 'sha256', 'number', 'list', 'entry'] as const;

function formatPath(section: string | null, index: number | null, field: string | null): string {
  if (section === null) return '';
  const at = index === null ? section : `${section}[${index}]`;
  return field === null ? at : `${at}.${field}`;
}

/** Map a server path (`diffusion[1].source`, `networks[0]`, `diffusion`, ``) onto the document. */
export function parseFieldPath(path: string): Pick<Issue, 'section' | 'index' | 'field'> {
  const m = /^([A-Za-z_]+)(?:\[(\d+)\])?(?:\.([A-Za-z_0-9]+))?/.exec(path);
  if (!m || !(EXTRAS_SECTIONS as readonly string[]).includes(m[1])) return { section: null, index: null, field: null };
  return { section: m[1] as ExtrasSection, index: m[2] === undefined ? null : Number(m[2]), field: m[2] === undefined ? null : (m[3] ?? null) };
}

const SHA256_RE = /^[0-9a-fA-F]{64}$/;

function isBlank(value: unknown): boolean {
  return value === undefined || value === null || (typeof value === 'string' && value.trim() === '');
}

/** The checks made before saving: required fields, names used twice, sha256 digests, numbers. */
export function checkExtras(doc: ExtrasDocument): Issue[] {
  const issues: Issue[] = [];
  const add = (section: ExtrasSection, index: number | null, field: string | null, rule: string) =>
    issues.push({ section, index, field, rule, path: formatPath(section, index, field) });
  const names = new Map<string, Array<[ExtrasSection, number]>>();
  for (const section of EXTRAS_SECTIONS) {
    const list = doc[section];
    if (list === undefined) continue;
    if (!Array.isArray(list)) {
      add(section, null, null, 'list');
      continue;
    }
    list.forEach((entry: unknown, index) => {
      if (!isObject(entry)) {
        add(section, index, null, 'entry');
        return;
      }
      for (const spec of fieldsOf(section, entry)) {
        const value = entry[spec.key];
        if (isBlank(value)) {
          if (spec.required) add(section, index, spec.key, 'required');
        } else if (spec.kind === 'number' && (typeof value !== 'number' || !Number.isFinite(value))) {
          add(section, index, spec.key, 'number');
        }
      }
      if (!isBlank(entry.sha256) && !SHA256_RE.test(String(entry.sha256))) add(section, index, 'sha256', 'sha256');
      if (typeof entry.name === 'string' && entry.name.trim() !== '') {
        const seen = names.get(entry.name) ?? [];
        seen.push([section, index]);
        names.set(entry.name, seen);
      }
    });
  }
  for (const places of names.values()) {
    if (places.length > 1) for (const [section, index] of places) add(section, index, 'name', 'duplicate');
  }
  return issues;
}
