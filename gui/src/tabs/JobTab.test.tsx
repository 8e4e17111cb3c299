import { act } from 'react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { ImageFiles } from '../client/api';
import type { ImageDocument } from '../client/requests';
import { useImageStore } from '../state/images';
import { defaultTabParams } from '../state/params';
import { DEFAULT_SETTINGS, useAppStore } from '../state/store';
import { SERVER } from '../test/fixtures';
import { byTestId, change, click, fakeClient, jobRecord, type Rendered, render } from '../test/render';
import { JobTabView } from './JobTab';

let view: Rendered | null = null;

beforeEach(() => {
  localStorage.clear();
  useAppStore.setState({
    settings: DEFAULT_SETTINGS,
    history: [],
    profiles: [],
    tabParams: { upscale: defaultTabParams('upscale', SERVER, { prompt: '', scheduler: '' }) },
  });
  const source = { blob: new Blob(['png']), url: 'blob:source', width: 96, height: 64, label: 'small.png' };
  useImageStore.setState({ tabs: { upscale: { source, mask: null, blendSources: [null, null] } }, sentFiles: {} });
});

afterEach(() => {
  view?.unmount();
  view = null;
});

describe('the Upscale tab', () => {
  it('shows its settings open and upscales with them at one press, nothing to tick first', async () => {
    const submit = vi.fn(async (_route: string, _doc: object, _files?: ImageFiles) => jobRecord('upscale_1', 'pending'));
    view = await render(<JobTabView tab="upscale" />, { client: fakeClient({ submit }) });
    const section = byTestId(view.container, 'section-upscale');
    expect(section?.tagName).toBe('FIELDSET');
    expect((byTestId(view.container, 'upscale-enabled') as HTMLInputElement).checked).toBe(true);
    expect(byTestId(view.container, 'output-size')?.textContent).toContain('192 × 128');
    const button = byTestId(view.container, 'generate') as HTMLButtonElement;
    expect(button.textContent).toBe('Upscale');
    expect(button.disabled).toBe(false);

    await click(button);
    expect(submit).toHaveBeenCalledTimes(1);
    const [route, doc, files] = submit.mock.calls[0];
    expect(route).toBe('upscale');
    expect((doc as ImageDocument).upscale).toMatchObject({ enabled: true, outscale: 2 });
    expect(Object.keys(files ?? {})).toEqual(['source']);
    expect(useAppStore.getState().history.map((h) => h.name)).toEqual(['upscale_1']);
  });

  it('will not send a job with both upscaling and face correction off, and says why', async () => {
    const p = useAppStore.getState().tabParams.upscale!;
    useAppStore.setState({ tabParams: { upscale: { ...p, upscale: { ...p.upscale, enabled: false, faces: false } } } });
    view = await render(<JobTabView tab="upscale" />);
    expect((byTestId(view.container, 'generate') as HTMLButtonElement).disabled).toBe(true);
    expect(byTestId(view.container, 'nothing-to-do')?.textContent).toContain('Turn on upscaling or face correction');
  });
});

describe('the txt2img size', () => {
  it("sends a width the server takes: 513 typed is corrected to the step's 512 on leaving the box", async () => {
    useAppStore.setState({ tabParams: { txt2img: defaultTabParams('txt2img', SERVER, { prompt: 'a cat', scheduler: '' }) } });
    const submit = vi.fn(async (_route: string, _doc: object, _files?: ImageFiles) => jobRecord('txt2img_1', 'pending'));
    view = await render(<JobTabView tab="txt2img" />, { client: fakeClient({ submit }) });
    const width = byTestId(view.container, 'width')?.querySelector('input[type=number]') as HTMLInputElement;
    await change(width, '513');
    // Off the grid: not taken while typing, so the size line does not promise 513 either.
    expect(useAppStore.getState().tabParams.txt2img?.width).toBe(512);
    await change(width, '520');
    expect(useAppStore.getState().tabParams.txt2img?.width).toBe(520);
    await change(width, '517');
    await act(async () => {
      width.dispatchEvent(new FocusEvent('focusout', { bubbles: true }));
    });
    expect(width.value).toBe('520');
    await change(width, '513');
    await act(async () => {
      width.dispatchEvent(new FocusEvent('focusout', { bubbles: true }));
    });
    expect(width.value).toBe('512');

    await click(byTestId(view.container, 'generate'));
    const [, doc] = submit.mock.calls[0];
    expect((doc as ImageDocument).params).toMatchObject({ width: 512 });
  });
});
