import { ApiError } from '../client/api';
import { act } from 'react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { JobStatus } from '../client/types';
import type { HistoryItem } from '../state/history';
import { defaultTabParams } from '../state/params';
import { DEFAULT_SETTINGS, useAppStore } from '../state/store';
import { SERVER } from '../test/fixtures';
import { allByTestId, buttonNamed, byTestId, click, fakeClient, jobRecord, type Rendered, render, settle } from '../test/render';
import { HistoryPanel } from './HistoryPanel';

const params = { ...defaultTabParams('txt2img', SERVER, { prompt: '', scheduler: '' }), seed: -1, prompt: 'a red kite' };

function item(name: string, status: JobStatus): HistoryItem {
  return { name, tab: 'txt2img', route: 'txt2img', submittedAt: 0, status, params };
}

function done(name: string, outputs: string[], seeds: number[]): HistoryItem {
  return item(
    name,
    jobRecord(name, 'success', {
      outputs,
      metadata: seeds.map((seed) => ({ params: { seed, prompt: 'a red kite' } })),
    }),
  );
}

let view: Rendered | null = null;

beforeEach(() => {
  localStorage.clear();
  useAppStore.setState({ settings: DEFAULT_SETTINGS, history: [], profiles: [], tabParams: { txt2img: params } });
});

afterEach(() => {
  view?.unmount();
  view = null;
});

describe('clear history', () => {
  it('asks first: nothing is removed until the user confirms, and Cancel keeps everything', async () => {
    useAppStore.setState({ history: [done('a', ['a_0.png'], [1]), done('b', ['b_0.png'], [2])] });
    view = await render(<HistoryPanel />);
    await click(byTestId(view.container, 'clear-history'));
    expect(useAppStore.getState().history).toHaveLength(2);
    expect(byTestId(view.container, 'clear-confirm')?.textContent).toContain('Remove all 2 jobs');

    await click(buttonNamed(view.container, 'Cancel'));
    expect(byTestId(view.container, 'clear-confirm')).toBeNull();
    expect(useAppStore.getState().history).toHaveLength(2);

    await click(byTestId(view.container, 'clear-history'));
    await click(byTestId(view.container, 'clear-history-confirm'));
    expect(useAppStore.getState().history).toEqual([]);
  });
});

describe('the image viewer', () => {
  it('opens in the page on the clicked image and steps through every image of the history', async () => {
    useAppStore.setState({ history: [done('new', ['new_0.png', 'new_1.png'], [7, 7]), done('old', ['old_0.png'], [3])] });
    view = await render(<HistoryPanel />);
    const thumbs = [...view.container.querySelectorAll('button.thumb')];
    await click(thumbs[1]);
    const box = () => byTestId(document.body, 'lightbox');
    const src = () => (byTestId(document.body, 'lightbox-image') as HTMLImageElement).getAttribute('src');
    expect(box()).not.toBeNull();
    expect(src()).toBe('http://h/output/old_0.png');
    expect(byTestId(document.body, 'lightbox-count')?.textContent).toBe('3 of 3');
    expect((byTestId(document.body, 'lightbox-next') as HTMLButtonElement).disabled).toBe(true);
    const download = byTestId(document.body, 'lightbox-download') as HTMLAnchorElement;
    expect(download.getAttribute('href')).toBe('http://h/output/old_0.png');
    expect(download.getAttribute('download')).toBe('old_0.png');

    await click(byTestId(document.body, 'lightbox-previous'));
    expect(src()).toBe('http://h/output/new_1.png');
    await click(byTestId(document.body, 'lightbox-previous'));
    expect(src()).toBe('http://h/output/new_0.png');
    expect((byTestId(document.body, 'lightbox-previous') as HTMLButtonElement).disabled).toBe(true);
    await click(byTestId(document.body, 'lightbox-next'));
    expect(src()).toBe('http://h/output/new_1.png');
    // The arrow keys step too, wherever the focus went.
    await act(async () => {
      document.body.dispatchEvent(new KeyboardEvent('keydown', { key: 'ArrowRight', bubbles: true }));
    });
    expect(src()).toBe('http://h/output/old_0.png');
    await act(async () => {
      document.body.dispatchEvent(new KeyboardEvent('keydown', { key: 'ArrowLeft', bubbles: true }));
    });
    expect(src()).toBe('http://h/output/new_1.png');

    await click(byTestId(document.body, 'lightbox-close'));
    expect(box()).toBeNull();
  });
});

describe('use parameters', () => {
  it("sets the seed to the one the image was made with, not the -1 the job was sent with", async () => {
    useAppStore.setState({ history: [done('a', ['a_0.png'], [123456])] });
    view = await render(<HistoryPanel />);
    await click(byTestId(view.container, 'load-params'));
    const loaded = useAppStore.getState().tabParams.txt2img;
    expect(loaded?.seed).toBe(123456);
    expect(loaded?.prompt).toBe('a red kite');
  });
});

describe('cards of unfinished and failed jobs', () => {
  it('shows progress as a share of the work, never "step x of steps + 1"', async () => {
    // 5 steps asked for; the server counts the saving of the output as a sixth unit.
    const running = jobRecord('r', 'running', { steps: { current: 3, total: 6 }, stages: { current: 0, total: 2 } });
    useAppStore.setState({ history: [item('r', running)] });
    view = await render(<HistoryPanel />);
    const text = byTestId(view.container, 'progress-text')?.textContent ?? '';
    expect(text).toContain('50% done');
    expect(text).not.toMatch(/of 6|Step/);
  });

  it("shows a failed job's reason in words and the server's message", async () => {
    const failed = jobRecord('f', 'failed', { reason: 'oom', error: 'The worker ran out of memory at 2048×2048.' });
    const odd = jobRecord('g', 'failed', { reason: 'quota-exceeded' });
    useAppStore.setState({ history: [item('f', failed), item('g', odd)] });
    view = await render(<HistoryPanel />);
    const reasons = allByTestId(view.container, 'failure-reason').map((el) => el.textContent);
    expect(reasons).toEqual(['Reason: out of memory', 'Reason: quota-exceeded']);
    expect(allByTestId(view.container, 'failure-message').map((el) => el.textContent)).toEqual([
      'The worker ran out of memory at 2048×2048.',
    ]);
  });
});

describe('live previews', () => {
  it("shows a running job's latest preview and fetches each newer one; none once it ends", async () => {
    const previewBlob = vi.fn(async (_url: string) => new Blob(['jpeg'], { type: 'image/jpeg' }));
    const preview = (step: number) => ({ url: `/api/job/preview?job=r&step=${step}`, step });
    const running = (step: number) => jobRecord('r', 'running', { steps: { current: step, total: 6 }, preview: preview(step) });
    useAppStore.setState({ history: [item('r', running(2))] });
    view = await render(<HistoryPanel />, { client: fakeClient({ previewBlob }) });
    await settle();
    expect(previewBlob).toHaveBeenCalledWith('/api/job/preview?job=r&step=2');
    const image = byTestId(view.container, 'card-preview');
    expect(image?.getAttribute('src')).toMatch(/^blob:/);
    expect(image?.getAttribute('alt')).toBe('Preview at step 2');

    await act(async () => useAppStore.getState().setStatus('r', running(4)));
    await settle();
    expect(previewBlob).toHaveBeenLastCalledWith('/api/job/preview?job=r&step=4');
    expect(byTestId(view.container, 'card-preview')?.getAttribute('alt')).toBe('Preview at step 4');

    await act(async () => useAppStore.getState().setStatus('r', jobRecord('r', 'cancelled')));
    expect(byTestId(view.container, 'card-preview')).toBeNull();
    expect(previewBlob).toHaveBeenCalledTimes(2);
  });
});

describe('outputs where the server wants the API key for them too', () => {
  it('fetches images with the key and shows them from memory; plain URLs without a key', async () => {
    const outputBlob = vi.fn(async (_file: string) => new Blob(['png'], { type: 'image/png' }));
    useAppStore.setState({ history: [done('a', ['a_0.png'], [1])] });
    view = await render(<HistoryPanel />, { client: fakeClient({ outputBlob }) });
    expect(byTestId(view.container, 'card-image')?.getAttribute('src')).toBe('http://h/output/a_0.png');
    expect(outputBlob).not.toHaveBeenCalled();
    view.unmount();

    useAppStore.getState().updateSettings({ apiKey: 'k-1' });
    view = await render(<HistoryPanel />, { client: fakeClient({ outputBlob }) });
    await settle();
    expect(outputBlob).toHaveBeenCalledWith('a_0.png');
    expect(byTestId(view.container, 'card-image')?.getAttribute('src')).toMatch(/^blob:/);
    await click(byTestId(view.container, 'download-metadata'));
    expect(outputBlob).toHaveBeenLastCalledWith('a_0.png.json');
  });

  it('fetches an image the refused key could not get again once a good key is set, and not one it already has', async () => {
    const outputBlob = vi.fn(async (file: string) => {
      if (useAppStore.getState().settings.apiKey !== 'good') throw new ApiError('http', 403, 'API key 7 was revoked');
      return new Blob([file], { type: 'image/png' });
    });
    useAppStore.getState().updateSettings({ apiKey: 'revoked' });
    useAppStore.setState({ history: [done('a', ['a_0.png'], [1])] });
    view = await render(<HistoryPanel />, { client: fakeClient({ outputBlob }) });
    await settle();
    expect(byTestId(view.container, 'card-image')?.getAttribute('src')).toBeNull();

    await act(async () => useAppStore.getState().updateSettings({ apiKey: 'good' }));
    await act(async () => {
      await new Promise((resolve) => setTimeout(resolve, 600));
    });
    const src = byTestId(view.container, 'card-image')?.getAttribute('src');
    expect(src).toMatch(/^blob:/);
    const calls = outputBlob.mock.calls.length;

    // A further change of key leaves a picture that is already there alone.
    await act(async () => useAppStore.getState().updateSettings({ apiKey: 'good2' }));
    await act(async () => {
      await new Promise((resolve) => setTimeout(resolve, 600));
    });
    expect(outputBlob.mock.calls.length).toBe(calls);
    expect(byTestId(view.container, 'card-image')?.getAttribute('src')).toBe(src);
  });
});
