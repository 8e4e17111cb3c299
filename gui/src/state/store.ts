/** The app's state: settings, each tab's parameters, history and profiles, kept in localStorage. */
import { create } from 'zustand';
import { createJSONStorage, persist } from 'zustand/middleware';
import type { JobStatus } from '../client/types';
import {
  addHistory,
  applyStatus,
  HISTORY_COLUMNS,
  HISTORY_SIZE,
  type HistoryItem,
  removeHistory,
} from './history';
import type { JobTab, TabParams } from './params';

export type ThemeChoice = 'system' | 'light' | 'dark';

export interface Settings {
  historySize: number;
  historyColumns: number;
  defaultPrompt: string;
  defaultScheduler: string;
  theme: ThemeChoice;
  /** '' follows the browser. */
  language: string;
  /** Sent as `Authorization: Bearer <key>` with every request; '' sends none. */
  apiKey: string;
}

export interface Profile {
  name: string;
  savedAt: number;
  params: Partial<TabParams>;
}

export const DEFAULT_SETTINGS: Settings = {
  historySize: HISTORY_SIZE.default,
  historyColumns: HISTORY_COLUMNS.default,
  defaultPrompt: '',
  defaultScheduler: '',
  theme: 'system',
  language: '',
  apiKey: '',
};

/** The settings as a state.json download carries them: never the API key, a secret. */
export function exportableSettings(settings: Settings): Omit<Settings, 'apiKey'> {
  const { apiKey: _apiKey, ...rest } = settings;
  return rest;
}

export interface AppState {
  settings: Settings;
  tabParams: Partial<Record<JobTab, TabParams>>;
  history: HistoryItem[];
  profiles: Profile[];
  updateSettings(patch: Partial<Settings>): void;
  setTabParams(tab: JobTab, params: TabParams): void;
  resetTabs(tabs: JobTab[]): void;
  pushHistory(item: HistoryItem): void;
  applyStatus(records: JobStatus[]): void;
  setStatus(name: string, status: JobStatus): void;
  removeHistory(name: string): void;
  clearHistory(): void;
  saveProfile(profile: Profile): void;
  deleteProfile(name: string): void;
  replaceState(state: Partial<Pick<AppState, 'settings' | 'tabParams' | 'history' | 'profiles'>>): void;
}

/** Bump when the stored shape changes incompatibly; older state is then migrated or dropped. */
export const STATE_VERSION = 1;
export const STORAGE_KEY = 'onnx-web-cluster';

const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, Math.round(v)));

export const useAppStore = create<AppState>()(
  persist(
    (set) => ({
      settings: DEFAULT_SETTINGS,
      tabParams: {},
      history: [],
      profiles: [],
      updateSettings: (patch) =>
        set((s) => {
          const settings = { ...s.settings, ...patch };
          settings.historySize = clamp(settings.historySize, HISTORY_SIZE.min, HISTORY_SIZE.max);
          settings.historyColumns = clamp(settings.historyColumns, HISTORY_COLUMNS.min, HISTORY_COLUMNS.max);
          return { settings, history: s.history.slice(0, settings.historySize) };
        }),
      setTabParams: (tab, params) => set((s) => ({ tabParams: { ...s.tabParams, [tab]: params } })),
      resetTabs: (tabs) =>
        set((s) => {
          const tabParams = { ...s.tabParams };
          for (const tab of tabs) delete tabParams[tab];
          return { tabParams };
        }),
      pushHistory: (item) => set((s) => ({ history: addHistory(s.history, item, s.settings.historySize) })),
      applyStatus: (records) => set((s) => ({ history: applyStatus(s.history, records) })),
      setStatus: (name, status) =>
        set((s) => ({ history: s.history.map((h) => (h.name === name ? { ...h, status } : h)) })),
      removeHistory: (name) => set((s) => ({ history: removeHistory(s.history, name) })),
      clearHistory: () => set({ history: [] }),
      saveProfile: (profile) =>
        set((s) => ({
          profiles: [...s.profiles.filter((p) => p.name !== profile.name), profile].sort((a, b) =>
            a.name.localeCompare(b.name),
          ),
        })),
      deleteProfile: (name) => set((s) => ({ profiles: s.profiles.filter((p) => p.name !== name) })),
      replaceState: (state) => set((s) => ({ ...s, ...state })),
    }),
    {
      name: STORAGE_KEY,
      version: STATE_VERSION,
      storage: createJSONStorage(() => localStorage),
      partialize: (s) => ({ settings: s.settings, tabParams: s.tabParams, history: s.history, profiles: s.profiles }),
      merge: (persisted, current) => {
        const saved = (persisted ?? {}) as Partial<AppState>;
        return {
          ...current,
          settings: { ...DEFAULT_SETTINGS, ...(saved.settings ?? {}) },
          tabParams: saved.tabParams ?? {},
          history: Array.isArray(saved.history) ? saved.history : [],
          profiles: Array.isArray(saved.profiles) ? saved.profiles : [],
        };
      },
    },
  ),
);
