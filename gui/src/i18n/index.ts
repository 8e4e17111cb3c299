/** Translation: bundled English and German, with the server's strings merged over them. */
import { createContext, useContext } from 'react';
import type { ServerStrings } from '../client/types';
import { de } from './de';
import { en, type Messages } from './en';

export const LANGUAGES = ['en', 'de'] as const;
export type Language = (typeof LANGUAGES)[number];

const BUNDLED: Record<Language, Messages> = { en, de };

export type Vars = Record<string, string | number>;
export type Translate = (key: string, vars?: Vars) => string;

export function isLanguage(value: string): value is Language {
  return (LANGUAGES as readonly string[]).includes(value);
}

/** `?lng=` first, then the saved choice, then the browser's languages, then English. */
export function chooseLanguage(query: string, saved: string, browser: readonly string[]): Language {
  for (const candidate of [query, saved, ...browser]) {
    const base = candidate.toLowerCase().split('-')[0];
    if (isLanguage(base)) return base;
  }
  return 'en';
}

/** Merge b over a, recursively, without touching either. */
export function deepMerge(a: Messages, b: unknown): Messages {
  if (b === null || typeof b !== 'object') return a;
  const out: Messages = { ...a };
  for (const [key, value] of Object.entries(b as Record<string, unknown>)) {
    const current = out[key];
    if (typeof value === 'string') out[key] = value;
    else if (value !== null && typeof value === 'object') {
      out[key] = deepMerge(typeof current === 'object' ? current : {}, value);
    }
  }
  return out;
}

/**
 * Look a key up: first as a dotted path, then with the rest of the key taken literally at each
 * level, because server model labels use dotted names as plain keys (`model.lora.details`).
 */
function find(messages: Messages, key: string): string | undefined {
  const direct = messages[key];
  if (typeof direct === 'string') return direct;
  const dot = key.indexOf('.');
  if (dot < 0) return undefined;
  const head = messages[key.slice(0, dot)];
  return typeof head === 'object' ? find(head, key.slice(dot + 1)) : undefined;
}

function interpolate(text: string, vars?: Vars): string {
  if (!vars) return text;
  return text.replace(/\{\{\s*(\w+)\s*\}\}/g, (m, name: string) => (name in vars ? String(vars[name]) : m));
}

/** The messages for one language: bundled, then the server's `translation` namespace over them. */
export function messagesFor(language: Language, server: ServerStrings): Messages {
  const serverTranslation = (server[language] as { translation?: unknown } | undefined)?.translation;
  return deepMerge(BUNDLED[language], serverTranslation);
}

/** A translate function: the language's messages, then English, then the key itself. */
export function createTranslator(language: Language, server: ServerStrings = {}): Translate {
  const primary = messagesFor(language, server);
  const fallback = language === 'en' ? primary : messagesFor('en', server);
  return (key, vars) => interpolate(find(primary, key) ?? find(fallback, key) ?? key, vars);
}

/** A label for a server name (model, scheduler, filter …): translated when known, else the name. */
export function labelFor(t: Translate, group: string, name: string): string {
  const key = `${group}.${name}`;
  const label = t(key);
  return label === key ? name : label;
}

export interface I18n {
  language: Language;
  t: Translate;
  setLanguage(language: Language): void;
}

export const I18nContext = createContext<I18n>({
  language: 'en',
  t: createTranslator('en'),
  setLanguage: () => {},
});

export function useI18n(): I18n {
  return useContext(I18nContext);
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/** Bytes in binary units, one decimal below 10 of a unit: 1536 → "1.5 KiB". */
export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || value >= 10 ? 0 : 1;
  return `${value.toFixed(digits)} ${BYTE_UNITS[unit]}`;
}
