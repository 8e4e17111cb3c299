import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createClient } from '../client/api';
import { DEFAULT_SETTINGS, STORAGE_KEY, useAppStore } from '../state/store';
import { byTestId, change, click, type Rendered, render } from '../test/render';
import { SettingsTab } from './SettingsTab';

let view: Rendered | null = null;

beforeEach(() => {
  localStorage.clear();
  useAppStore.setState({ settings: DEFAULT_SETTINGS, history: [], profiles: [], tabParams: {} });
});

afterEach(() => {
  view?.unmount();
  view = null;
});

describe('the API key setting', () => {
  it('is stored with the settings, hidden by default, and sent by the next call', async () => {
    view = await render(<SettingsTab />);
    const field = byTestId(view.container, 'api-key') as HTMLInputElement;
    expect(field.type).toBe('password');
    expect(field.labels?.[0]?.textContent).toBe('API key');
    await change(field, ' k-123 ');
    expect(useAppStore.getState().settings.apiKey).toBe('k-123');
    expect(JSON.parse(localStorage.getItem(STORAGE_KEY) ?? '{}').state.settings.apiKey).toBe('k-123');

    const fetch = vi.fn(async (_url: RequestInfo | URL, _init?: RequestInit) => new Response('[]', { status: 200 }));
    // The app's client reads the key from the store at each call, as App.tsx builds it.
    const client = createClient({ root: '', fetch: fetch as unknown as typeof globalThis.fetch, apiKey: () => useAppStore.getState().settings.apiKey });
    await client.status(['a']);
    expect(new Headers(fetch.mock.calls[0][1]?.headers).get('Authorization')).toBe('Bearer k-123');

    await click([...view.container.querySelectorAll('button')].find((b) => b.textContent === 'Show'));
    expect(field.type).toBe('text');
  });
});
