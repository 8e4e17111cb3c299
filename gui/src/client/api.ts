/** The HTTP client for the onnx-web API: one function per route the GUI calls (contract §13). */
import type {
  CancelResult,
  FilterLists,
  JobRoute,
  JobStatus,
  ModelLists,
  ServerParams,
  ServerStrings,
} from './types';

/** The most names one status or cancel call may carry (contract §4.11). */
export const MAX_JOBS_PER_CALL = 10;

/** How long start-up waits for the params before it calls the server unreachable (contract §13.1). */
export const PARAMS_TIMEOUT_MS = 5000;

export type ApiErrorKind = 'http' | 'network' | 'timeout';

/** Anything that stopped a call: an HTTP error answer, a network failure or a timeout. */
export class ApiError extends Error {
  readonly kind: ApiErrorKind;
  readonly status: number;

  constructor(kind: ApiErrorKind, status: number, message: string) {
    super(message);
    this.name = 'ApiError';
    this.kind = kind;
    this.status = status;
  }

  /** The server knows the route but has not built the feature yet. */
  get notImplemented(): boolean {
    return this.status === 501;
  }
}

export interface ClientOptions {
  root: string;
  token?: string;
  fetch?: typeof fetch;
}

export interface ImageFiles {
  [field: string]: Blob;
}

export interface ApiClient {
  readonly root: string;
  params(timeoutMs?: number): Promise<ServerParams>;
  strings(): Promise<ServerStrings>;
  models(): Promise<ModelLists>;
  pipelines(): Promise<string[]>;
  platforms(): Promise<string[]>;
  schedulers(): Promise<string[]>;
  filters(): Promise<FilterLists>;
  noises(): Promise<string[]>;
  wildcards(): Promise<string[]>;
  submit(route: Exclude<JobRoute, 'job'>, doc: object, files?: ImageFiles): Promise<JobStatus>;
  submitChain(doc: object): Promise<JobStatus>;
  status(names: string[]): Promise<JobStatus[]>;
  cancel(names: string[]): Promise<CancelResult[]>;
  outputUrl(file: string): string;
  extras(): Promise<unknown>;
  workerStatus(): Promise<unknown>;
  restartWorkers(): Promise<unknown>;
}

/** Strip trailing slashes so `root + '/api/…'` never doubles one. */
export function normaliseRoot(root: string): string {
  return root.replace(/\/+$/, '');
}

/** The message an error answer carries: `{"error": …}` when JSON, else the status line. */
async function errorMessage(res: Response): Promise<string> {
  const text = await res.text().catch(() => '');
  try {
    const body = JSON.parse(text) as { error?: unknown; title?: unknown; description?: unknown };
    if (typeof body.error === 'string' && body.error !== '') return body.error;
    if (typeof body.description === 'string' && body.description !== '') return body.description;
    if (typeof body.title === 'string' && body.title !== '') return body.title;
  } catch {
    // Not JSON: an HTML error page. The status line says more than its markup would.
  }
  return `${res.status} ${res.statusText}`.trim();
}

/** Check a list of job names against the server's per-call limit before sending it. */
function jobsQuery(names: string[]): string {
  if (names.length === 0) throw new Error('at least one job name is required');
  if (names.length > MAX_JOBS_PER_CALL) {
    throw new Error(`at most ${MAX_JOBS_PER_CALL} job names per call, got ${names.length}`);
  }
  return `jobs=${names.map(encodeURIComponent).join(',')}`;
}

export function createClient(options: ClientOptions): ApiClient {
  const root = normaliseRoot(options.root);
  const doFetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  const tokenQuery = () => `token=${encodeURIComponent(options.token ?? '')}`;

  async function call<T>(path: string, init: RequestInit = {}, timeoutMs?: number): Promise<T> {
    const controller = new AbortController();
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => controller.abort(), timeoutMs);
    let res: Response;
    try {
      res = await doFetch(`${root}${path}`, { ...init, signal: controller.signal });
    } catch (err) {
      if (controller.signal.aborted) {
        throw new ApiError('timeout', 0, `no answer from ${root || 'the server'} within ${timeoutMs} ms`);
      }
      throw new ApiError('network', 0, `cannot reach ${root || 'the server'}: ${(err as Error).message}`);
    } finally {
      if (timer !== undefined) clearTimeout(timer);
    }
    if (!res.ok) throw new ApiError('http', res.status, await errorMessage(res));
    return (await res.json()) as T;
  }

  const get = <T>(path: string, timeoutMs?: number) => call<T>(path, { method: 'GET' }, timeoutMs);

  return {
    root,
    params: (timeoutMs = PARAMS_TIMEOUT_MS) => get<ServerParams>('/api/settings/params', timeoutMs),
    strings: () => get<ServerStrings>('/api/settings/strings'),
    models: () => get<ModelLists>('/api/settings/models'),
    pipelines: () => get<string[]>('/api/settings/pipelines'),
    platforms: () => get<string[]>('/api/settings/platforms'),
    schedulers: () => get<string[]>('/api/settings/schedulers'),
    filters: () => get<FilterLists>('/api/settings/filters'),
    noises: () => get<string[]>('/api/settings/noises'),
    wildcards: () => get<string[]>('/api/settings/wildcards'),

    submit(route, doc, files = {}) {
      // Layout A of contract §3.1: the nested document in the `json` field, images as file parts
      // named after their field (the filename is irrelevant to the server).
      const form = new FormData();
      form.append('json', JSON.stringify(doc));
      for (const [field, blob] of Object.entries(files)) form.append(field, blob, field);
      return call<JobStatus>(`/api/${route}`, { method: 'POST', body: form });
    },

    submitChain(doc) {
      return call<JobStatus>('/api/job', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(doc),
      });
    },

    status: (names) => get<JobStatus[]>(`/api/job/status?${jobsQuery(names)}`),

    async cancel(names) {
      // Our server answers a bare array; onnx-web wraps it in `results`. Accept both.
      const body = await call<CancelResult[] | { results: CancelResult[] }>(
        `/api/job/cancel?${jobsQuery(names)}`,
        { method: 'PUT' },
      );
      return Array.isArray(body) ? body : body.results;
    },

    outputUrl: (file) => `${root}/output/${file.split('/').map(encodeURIComponent).join('/')}`,

    extras: () => get<unknown>(`/api/extras?${tokenQuery()}`),
    workerStatus: () => get<unknown>(`/api/worker/status?${tokenQuery()}`),
    restartWorkers: () => call<unknown>(`/api/worker/restart?${tokenQuery()}`, { method: 'POST' }),
  };
}
