import { beforeEach, describe, expect, it } from 'vitest';
import type { JobStatus } from '../client/types';
import { SERVER } from '../test/fixtures';
import { defaultTabParams } from './params';
import { DEFAULT_SETTINGS, exportableSettings, STORAGE_KEY, useAppStore } from './store';

const params = defaultTabParams('txt2img', SERVER, { prompt: '', scheduler: '' });
const record = (name: string): JobStatus => ({
  name,
  status: 'pending',
  queue: { current: 0, total: 1 },
  stages: { current: 0, total: 0 },
  steps: { current: 0, total: 0 },
  tiles: { current: 0, total: 0 },
});

describe('app store', () => {
  beforeEach(() => {
    localStorage.clear();
    useAppStore.setState({ settings: DEFAULT_SETTINGS, history: [], profiles: [], tabParams: {} });
  });

  it('writes history, settings, params and profiles to localStorage', () => {
    const s = useAppStore.getState();
    s.setTabParams('txt2img', { ...params, steps: 7 });
    s.pushHistory({ name: 'job-1', tab: 'txt2img', route: 'txt2img', submittedAt: 1, status: record('job-1'), params });
    s.saveProfile({ name: 'fast', savedAt: 1, params: { steps: 4 } });
    s.updateSettings({ language: 'de' });
    const stored = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? '{}');
    expect(stored.version).toBe(1);
    expect(stored.state.history[0].name).toBe('job-1');
    expect(stored.state.tabParams.txt2img.steps).toBe(7);
    expect(stored.state.profiles).toEqual([{ name: 'fast', savedAt: 1, params: { steps: 4 } }]);
    expect(stored.state.settings.language).toBe('de');
  });

  it('restores what was stored, filling settings a newer GUI added', async () => {
    localStorage.setItem(
      STORAGE_KEY,
      JSON.stringify({ version: 1, state: { settings: { historySize: 5 }, history: [{ name: 'old' }], profiles: 'broken' } }),
    );
    await useAppStore.persist.rehydrate();
    const s = useAppStore.getState();
    expect(s.settings).toEqual({ ...DEFAULT_SETTINGS, historySize: 5 });
    expect(s.history.map((h) => h.name)).toEqual(['old']);
    expect(s.profiles).toEqual([]);
  });

  it('clamps the history settings and trims the history to its size', () => {
    const s = useAppStore.getState();
    for (let i = 0; i < 5; i++) s.pushHistory({ name: `j${i}`, tab: 'txt2img', route: 'txt2img', submittedAt: i, status: record(`j${i}`), params });
    s.updateSettings({ historySize: 2, historyColumns: 99 });
    const after = useAppStore.getState();
    expect(after.settings.historySize).toBe(2);
    expect(after.settings.historyColumns).toBe(6);
    expect(after.history.map((h) => h.name)).toEqual(['j4', 'j3']);
  });

  it('keeps profiles sorted by name and replaces one saved under the same name', () => {
    const s = useAppStore.getState();
    s.saveProfile({ name: 'b', savedAt: 1, params: {} });
    s.saveProfile({ name: 'a', savedAt: 1, params: {} });
    s.saveProfile({ name: 'b', savedAt: 2, params: { steps: 1 } });
    expect(useAppStore.getState().profiles.map((p) => [p.name, p.savedAt])).toEqual([['a', 1], ['b', 2]]);
    s.deleteProfile('a');
    expect(useAppStore.getState().profiles.map((p) => p.name)).toEqual(['b']);
  });

  it('keeps the API key with the settings in this browser, but never in an exported state file', () => {
    useAppStore.getState().updateSettings({ apiKey: 'k-123' });
    const stored = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? '{}');
    expect(stored.state.settings.apiKey).toBe('k-123');
    const exported = exportableSettings(useAppStore.getState().settings);
    expect('apiKey' in exported).toBe(false);
    expect(exported.historySize).toBe(DEFAULT_SETTINGS.historySize);
  });
});
