import { act } from 'react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiError, type ApiClient } from '../client/api';
import type { Conversion, ExtrasDocument, ExtrasSaved, ModelStoreListing, StoredModel, WorkerStatus } from '../client/types';
import { useNotices } from '../components/Notices';
import { allByTestId, buttonNamed, byTestId, change, click, fakeClient, type Rendered, render, settle } from '../test/render';
import { ModelsTab } from './ModelsTab';
import { CONVERSION_POLL_MS } from './models/ModelStore';

let view: Rendered | null = null;
afterEach(() => {
  view?.unmount();
  view = null;
  vi.useRealTimers();
  useNotices.setState({ notices: [] });
});

const EXTRAS: ExtrasDocument = {
  diffusion: [
    { name: 'diffusion-a', label: 'A', source: 'civitai://1', pipeline: 'txt2img', custom: { keep: ['me'] } },
    { name: 'diffusion-b', source: 'b.safetensors' },
  ],
  upscaling: [{ name: 'upscaling-x', source: 'x.pth', scale: 4 }],
  strings: { en: { model: { 'diffusion-a': 'Model A' } } },
  other: 'kept',
};

const SAVED: ExtrasSaved = {
  file: 'extras.json',
  version: 3,
  successful: ['diffusion-a'],
  errors: [],
  conversions: [{ name: 'diffusion-a', section: 'diffusion', job: 'convert-1', state: 'pending' }],
  unchanged: ['diffusion-b', 'upscaling-x'],
  skipped: [{ name: 'diffusion-demo', reason: 'a demo model' }],
};

const ADMIN = { runtime: { root: 'http://h', interval: 60_000, token: 'secret', lng: '' } };

/** The Models tab with the admin token, on a client that answers from these overrides. */
async function open(overrides: Partial<ApiClient> = {}) {
  const client = fakeClient({ extras: async () => structuredClone(EXTRAS), ...overrides });
  view = await render(<ModelsTab />, { client, ...ADMIN });
  await settle();
  return view.container;
}

const entry = (root: ParentNode, section: string, index: number) =>
  root.querySelector(`[data-testid="extras-entry"][data-section="${section}"][data-index="${index}"]`) as HTMLElement;
const field = (root: ParentNode, key: string) => byTestId(root, `extras-field-${key}`) as HTMLInputElement;
const issues = (root: ParentNode, key: string) =>
  [...root.querySelectorAll(`[data-testid="extras-issue"][data-field="${key}"]`)].map((e) => e.textContent);
const notices = () => useNotices.getState().notices.map((n) => n.text);

/** A save whose sent document the test can read. */
function saving(answer: () => Promise<ExtrasSaved>) {
  const sent: ExtrasDocument[] = [];
  const saveExtras = vi.fn(async (text: string) => {
    sent.push(JSON.parse(text) as ExtrasDocument);
    return answer();
  });
  return { sent, saveExtras };
}

describe('the extras editor', () => {
  it('is there only with the admin token', async () => {
    const extras = vi.fn(async () => EXTRAS);
    view = await render(<ModelsTab />, { client: fakeClient({ extras }) });
    await settle();
    expect(byTestId(view.container, 'extras')).toBeNull();
    expect(view.container.textContent).toContain('?token=');
    expect(extras).not.toHaveBeenCalled();
  });

  it('edits fields, keeps unknown keys and strings, marks unsaved changes, and reports the save', async () => {
    const { sent, saveExtras } = saving(async () => SAVED);
    const modelStore = vi.fn(async () => ({ models: [], conversions: [] }));
    const root = await open({ saveExtras, modelStore });
    expect(byTestId(root, 'extras-dirty')).toBeNull();
    const a = entry(root, 'diffusion', 0);
    expect(a.getAttribute('data-name')).toBe('diffusion-a');
    await change(field(a, 'label'), 'Model A');
    await change(field(a, 'pipeline'), 'img2img');
    await click(field(a, 'half'));
    await change(field(a, 'version'), 'v2.1');
    await change(field(entry(root, 'upscaling', 0), 'scale'), '2');
    expect(byTestId(root, 'extras-dirty')?.textContent).toBe('Unsaved changes');

    await click(byTestId(root, 'extras-save'));
    await settle();
    expect(saveExtras).toHaveBeenCalledTimes(1);
    expect(sent[0]).toEqual({
      ...EXTRAS,
      diffusion: [
        { name: 'diffusion-a', label: 'Model A', source: 'civitai://1', pipeline: 'img2img', custom: { keep: ['me'] }, half: true, version: 'v2.1' },
        { name: 'diffusion-b', source: 'b.safetensors' },
      ],
      upscaling: [{ name: 'upscaling-x', source: 'x.pth', scale: 2 }],
    });
    const result = byTestId(root, 'extras-result')?.textContent ?? '';
    expect(result).toContain('Saved extras.json (version 3).');
    expect(result).toContain('Conversions started: 1; unchanged: 2.');
    expect(result).toContain('Skipped (a demo model): diffusion-demo.');
    expect(notices()[0]).toContain('Conversions started: 1');
    expect(byTestId(root, 'extras-dirty')).toBeNull();
    // The conversions list is asked for again, to show the ones just started.
    expect(modelStore).toHaveBeenCalledTimes(2);
  });

  it('adds entries named as onnx-web does, edits their type-specific fields, and removes entries', async () => {
    const { sent, saveExtras } = saving(async () => SAVED);
    const root = await open({ saveExtras });
    const add = byTestId(root, 'extras-add-networks') as HTMLElement;
    const addButton = byTestId(add, 'extras-add-button') as HTMLButtonElement;
    expect(addButton.disabled).toBe(true);
    await change(byTestId(add, 'extras-add-label'), 'E2E LoRA');
    expect((byTestId(add, 'extras-add-name') as HTMLInputElement).value).toBe('e2e-lora');
    await change(byTestId(add, 'extras-add-source'), 'lora/demo-detail.safetensors');
    await click(addButton);
    const lora = entry(root, 'networks', 0);
    expect(lora.getAttribute('data-name')).toBe('e2e-lora');
    expect((lora as HTMLDetailsElement).open).toBe(true);
    expect(issues(lora, 'type')).toEqual(['Required.']);
    expect(field(lora, 'tokens')).toBeNull();
    await change(field(lora, 'type'), 'lora');
    await change(field(lora, 'model'), 'sd-scripts');
    await change(field(lora, 'tokens'), 'detailed, sharp,');
    expect(field(lora, 'tokens').value).toBe('detailed, sharp,');
    await change(field(lora, 'weight'), '0.8');

    const diffusionAdd = byTestId(root, 'extras-add-diffusion') as HTMLElement;
    await change(byTestId(diffusionAdd, 'extras-add-label'), 'My Model');
    expect((byTestId(diffusionAdd, 'extras-add-name') as HTMLInputElement).value).toBe('diffusion-my-model');
    await change(byTestId(diffusionAdd, 'extras-add-name'), 'diffusion-mine');
    await change(byTestId(diffusionAdd, 'extras-add-label'), 'My Model 2');
    expect((byTestId(diffusionAdd, 'extras-add-name') as HTMLInputElement).value).toBe('diffusion-mine');
    await change(byTestId(diffusionAdd, 'extras-add-source'), 'mine.ckpt');
    await click(byTestId(diffusionAdd, 'extras-add-button'));
    await click(byTestId(entry(root, 'diffusion', 1), 'extras-remove'));

    await click(byTestId(root, 'extras-save'));
    await settle();
    expect(sent[0].networks).toEqual([
      { name: 'e2e-lora', label: 'E2E LoRA', source: 'lora/demo-detail.safetensors', type: 'lora', model: 'sd-scripts', tokens: ['detailed', 'sharp'], weight: 0.8 },
    ]);
    expect(sent[0].diffusion?.map((e) => e.name)).toEqual(['diffusion-a', 'diffusion-mine']);
  });

  it('checks required fields, names used twice and sha256 before saving, next to each field', async () => {
    const saveExtras = vi.fn(async () => SAVED);
    const root = await open({ saveExtras });
    const b = entry(root, 'diffusion', 1);
    await change(field(b, 'name'), 'diffusion-a');
    await change(field(b, 'sha256'), 'abc');
    await change(field(entry(root, 'upscaling', 0), 'scale'), '');
    await change(field(entry(root, 'upscaling', 0), 'source'), '');
    expect(issues(entry(root, 'diffusion', 0), 'name')).toEqual(['This name is used by another entry.']);
    expect(issues(b, 'name')).toEqual(['This name is used by another entry.']);
    expect(issues(b, 'sha256')).toEqual(['Must be 64 hexadecimal digits.']);
    expect(field(b, 'sha256').getAttribute('aria-invalid')).toBe('true');
    expect(issues(entry(root, 'upscaling', 0), 'scale')).toEqual(['Required.']);
    expect(issues(entry(root, 'upscaling', 0), 'source')).toEqual(['Required.']);
    expect(byTestId(root, 'extras-summary')).toBeNull();

    await click(byTestId(root, 'extras-save'));
    expect(saveExtras).not.toHaveBeenCalled();
    const summary = byTestId(root, 'extras-summary') as HTMLElement;
    expect(summary.getAttribute('role')).toBe('alert');
    expect(summary.textContent).toContain('Nothing was saved. Problems to fix first: 5.');
    expect(summary.textContent).toContain('diffusion[1].sha256');

    await change(field(b, 'name'), 'diffusion-b');
    await change(field(b, 'sha256'), 'F'.repeat(64));
    await change(field(entry(root, 'upscaling', 0), 'scale'), 'x');
    expect(issues(entry(root, 'upscaling', 0), 'scale')).toEqual(['Must be a number.']);
    await change(field(entry(root, 'upscaling', 0), 'scale'), '4');
    await change(field(entry(root, 'upscaling', 0), 'source'), 'x.pth');
    expect(byTestId(root, 'extras-summary')).toBeNull();
    await click(byTestId(root, 'extras-save'));
    await settle();
    expect(saveExtras).toHaveBeenCalledTimes(1);
  });

  it('edits the whole document as raw JSON; text that does not parse is shown and never saved', async () => {
    const { sent, saveExtras } = saving(async () => SAVED);
    const root = await open({ saveExtras });
    await click(byTestId(root, 'extras-raw'));
    const text = () => byTestId(root, 'extras-raw-text') as HTMLTextAreaElement;
    expect(JSON.parse(text().value)).toEqual(EXTRAS);
    expect(entry(root, 'diffusion', 0)).toBeNull();

    await change(text(), '{"diffusion": [');
    expect(byTestId(root, 'extras-dirty')).not.toBeNull();
    await click(byTestId(root, 'extras-save'));
    expect(byTestId(root, 'extras-raw-error')?.textContent).toContain('Not valid JSON');
    await click(byTestId(root, 'extras-raw'));
    expect(byTestId(root, 'extras-raw-error')).not.toBeNull();
    expect(saveExtras).not.toHaveBeenCalled();

    const edited = { ...EXTRAS, correction: [{ name: 'correction-gfpgan', source: 'gfpgan.pth', model: 'gfpgan' }] };
    await change(text(), JSON.stringify(edited));
    await click(byTestId(root, 'extras-raw'));
    expect(entry(root, 'correction', 0).getAttribute('data-name')).toBe('correction-gfpgan');
    expect(field(entry(root, 'correction', 0), 'model').value).toBe('gfpgan');

    await click(byTestId(root, 'extras-raw'));
    await change(text(), JSON.stringify({ ...edited, strings: { de: {} } }));
    await click(byTestId(root, 'extras-save'));
    await settle();
    expect(sent[0]).toEqual({ ...edited, strings: { de: {} } });
    expect(byTestId(root, 'extras-raw-text')).not.toBeNull();
    expect(byTestId(root, 'extras-dirty')).toBeNull();
  });

  it("shows the server's 400 next to each field and entry, with a summary; editing the field clears it", async () => {
    const body = {
      error: 'the extras document breaks 3 rules',
      errors: [
        { field: 'diffusion[1].source', rule: 'not a known source scheme' },
        { field: 'upscaling[0]', rule: 'no converter for this model' },
        { field: '', rule: 'the document is too large' },
      ],
    };
    const saveExtras = vi.fn(async () => Promise.reject(new ApiError('http', 400, body.error, body)));
    const root = await open({ saveExtras });
    await click(byTestId(root, 'extras-save'));
    await settle();
    const b = entry(root, 'diffusion', 1);
    expect((b as HTMLDetailsElement).open).toBe(true);
    expect(issues(b, 'source')).toEqual(['not a known source scheme']);
    expect(allByTestId(entry(root, 'upscaling', 0), 'extras-issue').map((e) => e.textContent)).toEqual(['no converter for this model']);
    const summary = byTestId(root, 'extras-summary')?.textContent ?? '';
    expect(summary).toContain('The server refused the document; nothing was stored. Problems: 3.');
    expect(summary).toContain('diffusion[1].source not a known source scheme');
    expect(summary).toContain('the document is too large');
    expect(byTestId(root, 'extras-dirty')).toBeNull();

    await change(field(b, 'source'), 'hf://b');
    expect(issues(b, 'source')).toEqual([]);
    // Fixed, the entry stays open under the user's hands.
    expect((b as HTMLDetailsElement).open).toBe(true);
    expect(byTestId(root, 'extras-summary')?.textContent).not.toContain('not a known source scheme');
  });

  it('shows a 409 conflict and cancels the conversion still running', async () => {
    const body = { error: 'a conversion is still running', conflicts: [{ name: 'diffusion-a', job: 'convert-7' }] };
    const saveExtras = vi.fn(async () => Promise.reject(new ApiError('http', 409, body.error, body)));
    const cancel = vi.fn(async (names: string[]) => names.map((name) => ({ name, status: 'cancelled' as const })));
    const modelStore = vi.fn(async () => ({ models: [], conversions: [] }));
    const root = await open({ saveExtras, cancel, modelStore });
    await change(field(entry(root, 'diffusion', 0), 'source'), 'civitai://2');
    await click(byTestId(root, 'extras-save'));
    await settle();
    const conflicts = byTestId(root, 'extras-conflicts') as HTMLElement;
    expect(conflicts.getAttribute('role')).toBe('alert');
    expect(conflicts.textContent).toContain('a conversion is still running');
    expect(conflicts.textContent).toContain('diffusion-a: its previous conversion (convert-7) is still pending or running.');
    expect(byTestId(root, 'extras-dirty')).not.toBeNull();

    await click(buttonNamed(conflicts, 'Cancel conversion'));
    await settle();
    expect(cancel).toHaveBeenCalledWith(['convert-7']);
    expect(byTestId(root, 'extras-conflicts')).toBeNull();
    expect(notices()).toContain('Conversion of diffusion-a cancelled');
    expect(modelStore).toHaveBeenCalledTimes(2);
  });

  it('reports a refused token as the other admin calls do', async () => {
    const saveExtras = vi.fn(async () => Promise.reject(new ApiError('http', 403, 'wrong admin token')));
    const root = await open({ saveExtras });
    await click(byTestId(root, 'extras-save'));
    await settle();
    expect(byTestId(root, 'extras-summary')?.textContent).toBe('Not allowed: wrong admin token (check the admin token)');
  });

  it('starts from an empty document where the server has no extras file yet', async () => {
    const { sent, saveExtras } = saving(async () => SAVED);
    const root = await open({ extras: async () => Promise.reject(new ApiError('http', 404, 'no extras file is configured')), saveExtras });
    expect(root.textContent).toContain('The server has no extras file yet (no extras file is configured); saving creates one.');
    const add = byTestId(root, 'extras-add-upscaling') as HTMLElement;
    await change(byTestId(add, 'extras-add-label'), 'Real ESRGAN x4');
    await change(byTestId(add, 'extras-add-source'), 'https://example.com/x4.pth');
    await click(byTestId(add, 'extras-add-button'));
    await change(field(entry(root, 'upscaling', 0), 'scale'), '4');
    await click(byTestId(root, 'extras-save'));
    await settle();
    expect(sent[0]).toEqual({ upscaling: [{ name: 'upscaling-real-esrgan-x4', label: 'Real ESRGAN x4', source: 'https://example.com/x4.pth', scale: 4 }] });
  });

  it('asks before Reload discards unsaved changes', async () => {
    const extras = vi.fn(async () => structuredClone(EXTRAS));
    const root = await open({ extras });
    await change(field(entry(root, 'diffusion', 0), 'label'), 'changed');
    await click(byTestId(root, 'extras-reload'));
    expect(byTestId(root, 'extras-reload-confirm')?.getAttribute('role')).toBe('alertdialog');
    await click(buttonNamed(byTestId(root, 'extras-reload-confirm') as HTMLElement, 'Cancel'));
    expect(field(entry(root, 'diffusion', 0), 'label').value).toBe('changed');
    expect(extras).toHaveBeenCalledTimes(1);

    await click(byTestId(root, 'extras-reload'));
    await click(byTestId(root, 'extras-reload-confirm-yes'));
    await settle();
    expect(extras).toHaveBeenCalledTimes(2);
    expect(field(entry(root, 'diffusion', 0), 'label').value).toBe('A');
    expect(byTestId(root, 'extras-dirty')).toBeNull();
    // Nothing to lose: Reload reloads at once.
    await click(byTestId(root, 'extras-reload'));
    await settle();
    expect(extras).toHaveBeenCalledTimes(3);
  });
});

const conversion = (state: Conversion['state'], extra: Partial<Conversion> = {}): Conversion => ({
  job: 'convert-1',
  name: 'e2e-lora',
  section: 'networks',
  state,
  stage: null,
  progress: { current: 0, total: 0 },
  reason: null,
  created: '2026-12-06T04:00:00Z',
  updated: '2026-12-06T04:00:01Z',
  ...extra,
});

const MODEL: StoredModel = {
  name: 'e2e-lora',
  kind: 'lora',
  family: 'sd15',
  content_hash: '0123456789abcdef'.repeat(4),
  size_bytes: 3_250_000,
  state: 'ready',
  created: '2026-12-06T04:00:02Z',
  labels: { en: 'E2E LoRA' },
};

/** Answers in turn, the last one again and again. */
function answers(...listings: ModelStoreListing[]) {
  let i = 0;
  return vi.fn(async () => listings[Math.min(i++, listings.length - 1)]);
}

/** Let time pass on the fake clock, and the answers it brings settle. */
async function wait(ms: number) {
  await act(async () => {
    await vi.advanceTimersByTimeAsync(ms);
  });
}

describe('conversions and the model store', () => {
  it('shows each stage with its progress, polls every 2 s while one is active, and stops after', async () => {
    vi.useFakeTimers();
    const modelStore = answers(
      { models: [], conversions: [conversion('pending')] },
      { models: [], conversions: [conversion('running', { stage: 'download', progress: { current: 1536, total: 5 * 1024 * 1024 } })] },
      { models: [], conversions: [conversion('running', { stage: 'convert', progress: { current: 3, total: 10 } })] },
      { models: [MODEL], conversions: [conversion('success', { stage: 'publish', progress: { current: 3_250_000, total: 3_250_000 } })] },
    );
    view = await render(<ModelsTab />, { client: fakeClient({ modelStore }), ...ADMIN });
    await wait(0);
    const row = () => byTestId(view!.container, 'conversion') as HTMLElement;
    expect(row().getAttribute('data-state')).toBe('pending');
    expect(row().textContent).toContain('Queued');
    expect(modelStore).toHaveBeenCalledTimes(1);

    await wait(CONVERSION_POLL_MS - 1);
    expect(modelStore).toHaveBeenCalledTimes(1);
    await wait(1);
    expect(modelStore).toHaveBeenCalledTimes(2);
    expect(byTestId(row(), 'conversion-progress')?.textContent).toBe('Downloading: 1.5 KiB of 5.0 MiB');
    expect((row().querySelector('progress') as HTMLProgressElement).value).toBe(1536);

    await wait(CONVERSION_POLL_MS);
    expect(byTestId(row(), 'conversion-progress')?.textContent).toBe('Converting: step 3 of 10');
    expect(buttonNamed(row(), 'Cancel conversion')).toBeDefined();

    await wait(CONVERSION_POLL_MS);
    expect(row().getAttribute('data-state')).toBe('success');
    expect(byTestId(row(), 'conversion-progress')).toBeNull();
    expect(buttonNamed(row(), 'Cancel conversion')).toBeUndefined();
    expect(byTestId(view.container, 'stored-model')?.getAttribute('data-name')).toBe('e2e-lora');
    await wait(10 * CONVERSION_POLL_MS);
    expect(modelStore).toHaveBeenCalledTimes(4);
  });

  it('stops polling when the tab closes, and cancels a running conversion', async () => {
    vi.useFakeTimers();
    const running = { models: [], conversions: [conversion('running', { stage: 'convert', progress: { current: 1, total: 4 } })] };
    const modelStore = answers(running);
    const cancel = vi.fn(async () => [{ name: 'convert-1', status: 'cancelled' as const }]);
    view = await render(<ModelsTab />, { client: fakeClient({ modelStore, cancel }), ...ADMIN });
    await wait(0);
    await click(byTestId(view.container, 'conversion-cancel'));
    await wait(0);
    expect(cancel).toHaveBeenCalledWith(['convert-1']);
    expect(modelStore).toHaveBeenCalledTimes(2);

    view.unmount();
    view = null;
    const calls = modelStore.mock.calls.length;
    await wait(10 * CONVERSION_POLL_MS);
    expect(modelStore).toHaveBeenCalledTimes(calls);
  });

  it('lists stored models with kind, size and short hash, and deletes one after confirmation', async () => {
    const modelStore = answers({ models: [MODEL], conversions: [] }, { models: [], conversions: [] });
    const deleteModel = vi.fn(async (name: string) => ({ name, versions: 2 }));
    const root = await open({ modelStore, deleteModel });
    const row = byTestId(root, 'stored-model') as HTMLElement;
    expect(row.textContent).toContain('lora · sd15');
    expect(row.textContent).toContain('3.1 MiB');
    expect(row.textContent).toContain('0123456789ab');
    expect(row.textContent).not.toContain('0123456789abc');
    expect(row.textContent).toContain('Ready');

    await click(byTestId(row, 'delete-model'));
    expect(byTestId(row, 'delete-confirm')?.textContent).toContain('Delete every version of e2e-lora');
    await click(buttonNamed(row, 'Cancel'));
    expect(deleteModel).not.toHaveBeenCalled();
    await click(byTestId(row, 'delete-model'));
    await click(byTestId(row, 'delete-confirm-yes'));
    await settle();
    expect(deleteModel).toHaveBeenCalledWith('e2e-lora');
    expect(notices()).toContain('Deleted e2e-lora (versions: 2)');
    expect(byTestId(root, 'stored-model')).toBeNull();
  });

  it("shows why a delete was refused: pending jobs need the model, or it is gone", async () => {
    const modelStore = answers({ models: [MODEL], conversions: [] });
    const deleteModel = vi.fn(async () => Promise.reject(new ApiError('http', 409, '2 pending jobs use e2e-lora', { error: '2 pending jobs use e2e-lora' })));
    const root = await open({ modelStore, deleteModel });
    await click(byTestId(root, 'delete-model'));
    await click(byTestId(root, 'delete-confirm-yes'));
    await settle();
    expect(byTestId(root, 'delete-error')?.textContent).toContain('2 pending jobs use e2e-lora');
    expect(byTestId(root, 'stored-model')).not.toBeNull();
  });

  it('says so where the server has no model store', async () => {
    const root = await open({ modelStore: async () => Promise.reject(new ApiError('http', 501, 'the model store is not built yet')) });
    expect(allByTestId(root, 'store-error').map((e) => e.textContent)).toEqual([
      'Not available on this server yet: the model store is not built yet',
      'Not available on this server yet: the model store is not built yet',
    ]);
  });
});

describe('the workers', () => {
  const STATUS: WorkerStatus = {
    jobs: [],
    workers: [['cuda', 12, true]],
    details: [
      {
        id: 'worker-a',
        platform: 'cuda',
        device: 'NVIDIA H100',
        providers: ['CUDAExecutionProvider'],
        models: [],
        version: '0.13.0',
        jobs: 12,
        started: '2026-12-06T04:00:00Z',
        seen: '2026-12-06T04:10:00Z',
        cached_models: ['stable-diffusion-onnx-v1-5', 'e2e-lora'],
        heartbeat_age_s: 1.234,
        job: 'txt2img_1_abc_1',
        loading: { model: 'diffusion-sdxl-demo', current: 2, total: 5 },
      },
      { id: 'worker-b', platform: 'cpu', device: 'cpu', providers: [], models: [], version: '0.13.0', jobs: 0, started: '', seen: '' },
    ],
  };

  it('shows device, jobs done, heartbeat, current job, loading progress and cached models, and restarts', async () => {
    const restartWorkers = vi.fn(async () => ({ ...STATUS, details: STATUS.details?.slice(1) }));
    const root = await open({ workerStatus: async () => STATUS, restartWorkers });
    const rows = allByTestId(root, 'worker-row');
    expect(rows.map((r) => r.getAttribute('data-id'))).toEqual(['worker-a', 'worker-b']);
    const cells = [...rows[0].children].map((c) => c.textContent);
    expect(cells[0]).toContain('NVIDIA H100');
    expect(cells[0]).toContain('cuda');
    expect(cells[1]).toBe('12');
    expect(cells[2]).toBe('1.2 s ago');
    expect(cells[3]).toContain('txt2img_1_abc_1');
    expect(byTestId(rows[0], 'worker-loading')?.textContent).toBe('Loading diffusion-sdxl-demo: 2 of 5');
    expect(cells[4]).toContain('stable-diffusion-onnx-v1-5');
    expect(cells[4]).toContain('e2e-lora');
    expect([...rows[1].children].map((c) => c.textContent)).toEqual(['cpucpu · worker-b', '0', '—', 'Idle', 'None']);

    await click(buttonNamed(byTestId(root, 'workers') as HTMLElement, 'Restart workers'));
    await settle();
    expect(restartWorkers).toHaveBeenCalledTimes(1);
    expect(notices()).toContain('Workers restarted');
    expect(allByTestId(root, 'worker-row').map((r) => r.getAttribute('data-id'))).toEqual(['worker-b']);
  });

  it('reports a refused token', async () => {
    const root = await open({ workerStatus: async () => Promise.reject(new ApiError('http', 401, 'the admin token is required')) });
    expect(byTestId(root, 'worker-status-error')?.textContent).toBe('Not allowed: the admin token is required (check the admin token)');
  });
});
