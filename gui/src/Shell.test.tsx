import { act } from 'react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ApiError, type JobsQuery } from './client/api';
import { Shell } from './Shell';
import { defaultTabParams, JOB_TABS } from './state/params';
import { DEFAULT_SETTINGS, useAppStore } from './state/store';
import { SERVER } from './test/fixtures';
import { byTestId, fakeClient, jobRecord, type Rendered, render } from './test/render';

let view: Rendered | null = null;

beforeEach(() => {
  localStorage.clear();
  window.location.hash = '';
  const tabParams = Object.fromEntries(JOB_TABS.map((tab) => [tab, defaultTabParams(tab, SERVER, { prompt: '', scheduler: '' })]));
  useAppStore.setState({ settings: DEFAULT_SETTINGS, history: [], profiles: [], tabParams });
});

afterEach(() => {
  view?.unmount();
  view = null;
});

const wait = (ms: number) => act(() => new Promise<void>((resolve) => setTimeout(resolve, ms)));

/** A keys-mode server: the listing answers only to the key `good`. */
const keysMode = fakeClient({
  jobs: async (_query?: JobsQuery) => {
    const key = useAppStore.getState().settings.apiKey;
    if (key === 'good') return { jobs: [], next: null };
    throw new ApiError('http', key ? 403 : 401, key ? 'API key 7 was revoked' : 'this server needs an API key');
  },
});

describe('the shell', () => {
  it('says when the server wants an API key, points to Settings, and clears once a good key is set', async () => {
    view = await render(<Shell />, { client: keysMode });
    await wait(450);
    expect(byTestId(view.container, 'auth-banner')?.textContent).toContain('this server needs an API key');
    expect(byTestId(view.container, 'api-key-link')).not.toBeNull();

    await act(async () => useAppStore.getState().updateSettings({ apiKey: 'old' }));
    await wait(450);
    expect(byTestId(view.container, 'auth-banner')?.textContent).toContain('API key 7 was revoked');

    await act(async () => useAppStore.getState().updateSettings({ apiKey: 'good' }));
    await wait(450);
    expect(byTestId(view.container, 'auth-banner')).toBeNull();
  });

  it('shows the Jobs tab only where the server lists jobs', async () => {
    view = await render(<Shell />, { jobsListing: false });
    expect(byTestId(view.container, 'tab-jobs')).toBeNull();
    view.unmount();
    view = await render(<Shell />, { jobsListing: true });
    expect(byTestId(view.container, 'tab-jobs')?.textContent).toBe('Jobs');
  });

  it("follows a running card by the server's event stream, showing the image the moment `success` arrives", async () => {
    const params = defaultTabParams('txt2img', SERVER, { prompt: '', scheduler: '' });
    const running = jobRecord('job-1', 'running', { steps: { current: 0, total: 4 } });
    useAppStore.setState({ history: [{ name: 'job-1', tab: 'txt2img', route: 'txt2img', submittedAt: 0, status: running, params }] });
    let server!: ReadableStreamDefaultController<Uint8Array>;
    const opened: string[][] = [];
    const status = vi.fn(async () => [running]);
    const client = fakeClient({
      status,
      jobEvents: async (names) => {
        opened.push(names);
        return new ReadableStream<Uint8Array>({ start: (c) => void (server = c) });
      },
    });
    const send = (type: string, data: unknown) =>
      act(async () => {
        server.enqueue(new TextEncoder().encode(`event: ${type}\ndata: ${JSON.stringify(data)}\n\n`));
        await new Promise((resolve) => setTimeout(resolve, 0));
      });
    view = await render(<Shell />, { client });
    const card = () => view!.container.querySelector('[data-testid="job-card"][data-name="job-1"]');
    expect(opened).toEqual([['job-1']]);

    await send('status', jobRecord('job-1', 'running', { steps: { current: 2, total: 4 } }));
    expect(card()?.textContent).toContain('50%');
    await send('status', jobRecord('job-1', 'success', { outputs: ['job-1_0.png'], metadata: [{ params: { prompt: 'a kite' } }] }));
    expect(card()?.getAttribute('data-status')).toBe('success');
    expect(byTestId(card()!, 'card-image')?.getAttribute('src')).toBe('http://h/output/job-1_0.png');
    // Nothing waited for a poll round: the stream carried it all.
    await wait(300);
    expect(status).not.toHaveBeenCalled();
  });

  it('says so while an outage answers the status rounds with 503 (or a quota with 429), and clears once they answer', async () => {
    const params = defaultTabParams('txt2img', SERVER, { prompt: '', scheduler: '' });
    const running = jobRecord('job-1', 'running', { steps: { current: 1, total: 4 } });
    useAppStore.setState({ history: [{ name: 'job-1', tab: 'txt2img', route: 'txt2img', submittedAt: 0, status: running, params }] });
    let answer: () => Promise<typeof running[]> = async () => {
      throw new ApiError('http', 503, 'the database is unavailable; try again shortly');
    };
    const client = fakeClient({ status: () => answer() });
    view = await render(<Shell />, { client, runtime: { root: 'http://h', interval: 100, token: '', lng: '' } });
    await wait(400);
    const banner = () => byTestId(view!.container, 'unavailable-banner');
    expect(banner()?.textContent).toContain('503: the database is unavailable; try again shortly');
    expect(byTestId(view.container, 'offline')).toBeNull();

    answer = async () => {
      throw new ApiError('http', 429, 'rate limit of API key 7: 30 requests per minute');
    };
    await wait(300);
    expect(banner()?.textContent).toContain('429: rate limit of API key 7');

    answer = async () => [running];
    await wait(300);
    expect(banner()).toBeNull();
  });
});
