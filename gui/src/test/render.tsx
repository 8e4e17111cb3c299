/** Render components in happy-dom for the component tests, with the app's context around them. */
import { act, type ReactNode } from 'react';
import { createRoot, type Root } from 'react-dom/client';
import type { ApiClient } from '../client/api';
import type { JobStatus, JobStatusName } from '../client/types';
import { type AppContextValue, AppContext } from '../context';
import { SERVER } from './fixtures';

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

/** A client whose every call answers from the fixtures; pass the calls a test cares about. */
export function fakeClient(overrides: Partial<ApiClient> = {}): ApiClient {
  const ok = <T,>(v: T) => () => Promise.resolve(v);
  return {
    root: 'http://h',
    params: ok(SERVER.params),
    strings: ok(SERVER.strings),
    models: ok(SERVER.models),
    pipelines: ok(SERVER.pipelines),
    platforms: ok(SERVER.platforms),
    schedulers: ok(SERVER.schedulers),
    filters: ok(SERVER.filters),
    noises: ok(SERVER.noises),
    wildcards: ok(SERVER.wildcards),
    limits: ok(SERVER.limits ?? null),
    submit: () => Promise.reject(new Error('not in this test')),
    submitChain: () => Promise.reject(new Error('not in this test')),
    status: ok([]),
    // A server without event streams: the cards are polled, as before streams existed.
    jobEvents: ok(null),
    cancel: ok([]),
    jobs: ok({ jobs: [], next: null }),
    outputUrl: (file: string) => `http://h/output/${file}`,
    outputBlob: () => Promise.resolve(new Blob()),
    previewBlob: () => Promise.resolve(new Blob()),
    extras: ok({}),
    saveExtras: () => Promise.reject(new Error('not in this test')),
    modelStore: ok({ models: [], conversions: [] }),
    deleteModel: () => Promise.reject(new Error('not in this test')),
    workerStatus: ok({}),
    restartWorkers: ok({}),
    ...overrides,
  };
}

/** A status record with every counter, as the server sends it. */
export function jobRecord(name: string, status: JobStatusName, extra: Partial<JobStatus> = {}): JobStatus {
  const zero = { current: 0, total: 0 };
  return { name, status, queue: zero, stages: zero, steps: zero, tiles: zero, ...extra };
}

export interface Rendered {
  container: HTMLElement;
  root: Root;
  unmount(): void;
}

export async function render(ui: ReactNode, context: Partial<AppContextValue> = {}): Promise<Rendered> {
  const value: AppContextValue = {
    client: fakeClient(),
    server: SERVER,
    runtime: { root: 'http://h', interval: 60_000, token: '', lng: '' },
    missing: [],
    jobsListing: true,
    ...context,
  };
  const container = document.createElement('div');
  document.body.appendChild(container);
  const root = createRoot(container);
  await act(async () => root.render(<AppContext.Provider value={value}>{ui}</AppContext.Provider>));
  return {
    container,
    root,
    unmount: () => {
      act(() => root.unmount());
      container.remove();
    },
  };
}

/** Click inside act, letting promises the handler started settle. */
export async function click(el: Element | null | undefined): Promise<void> {
  if (!el) throw new Error('nothing to click');
  await act(async () => {
    (el as HTMLElement).click();
  });
}

/** Set an input's, textarea's or select's value the way React notices, then fire its event. */
export async function change(el: Element | null | undefined, value: string): Promise<void> {
  if (!el) throw new Error('nothing to change');
  const proto =
    el instanceof HTMLSelectElement
      ? HTMLSelectElement.prototype
      : el instanceof HTMLTextAreaElement
        ? HTMLTextAreaElement.prototype
        : HTMLInputElement.prototype;
  await act(async () => {
    Object.getOwnPropertyDescriptor(proto, 'value')?.set?.call(el, value);
    el.dispatchEvent(new Event(el instanceof HTMLSelectElement ? 'change' : 'input', { bubbles: true }));
  });
}

/** Wait for pending promises and effects (a fake call answering, a state update). */
export async function settle(): Promise<void> {
  await act(async () => {
    await new Promise((resolve) => setTimeout(resolve, 0));
  });
}

export const byTestId = (root: ParentNode, id: string) => root.querySelector(`[data-testid="${id}"]`);
export const allByTestId = (root: ParentNode, id: string) => [...root.querySelectorAll(`[data-testid="${id}"]`)];
export const buttonNamed = (root: ParentNode, text: string) =>
  [...root.querySelectorAll('button')].find((b) => b.textContent?.trim() === text || b.getAttribute('aria-label') === text);
