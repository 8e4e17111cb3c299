/** The HTTP client for the onnx-web API: one function per route the GUI calls (contract §13). */
import type {
  CancelResult,
  DeletedModel,
  ExtrasSaved,
  FilterLists,
  JobFilter,
  JobPage,
  JobRoute,
  JobStatus,
  ModelLists,
  ModelStoreListing,
  ServerLimits,
  ServerParams,
  ServerStrings,
  WorkerStatus,
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
  /** The error answer's JSON body (field errors, conflicts), or null when it had none. */
  readonly body: unknown;
  /** Seconds the server asked to wait before trying again (`Retry-After` of a 429 or 503), if any. */
  readonly retryAfterS: number | null;

  constructor(kind: ApiErrorKind, status: number, message: string, body: unknown = null, retryAfterS: number | null = null) {
    super(message);
    this.name = 'ApiError';
    this.kind = kind;
    this.status = status;
    this.body = body;
    this.retryAfterS = retryAfterS;
  }

  /** The server knows the route but has not built the feature yet. */
  get notImplemented(): boolean {
    return this.status === 501;
  }

  /** The server wants an API key, or refused the one sent. */
  get unauthorised(): boolean {
    return this.kind === 'http' && (this.status === 401 || this.status === 403);
  }
}

export interface ClientOptions {
  root: string;
  /** The admin token (`?token=`), sent as the Bearer header of the admin routes only. */
  token?: string;
  /** The API key from Settings, read at each call so a change applies without a new client. */
  apiKey?: () => string;
  fetch?: typeof fetch;
}

export interface JobsQuery {
  status?: JobFilter;
  limit?: number;
  cursor?: string | null;
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
  /** `GET /api/settings/limits`; `null` from a server without it (onnx-web), whose limits are unknown. */
  limits(): Promise<ServerLimits | null>;
  submit(route: Exclude<JobRoute, 'job'>, doc: object, files?: ImageFiles): Promise<JobStatus>;
  submitChain(doc: object): Promise<JobStatus>;
  status(names: string[]): Promise<JobStatus[]>;
  /**
   * `GET /api/job/events` for at most ten names: the open stream's body, closed by aborting
   * `signal`; `null` when the server has no such stream (404, 405, 501, or not an event stream).
   */
  jobEvents(names: string[], signal: AbortSignal): Promise<ReadableStream<Uint8Array> | null>;
  cancel(names: string[]): Promise<CancelResult[]>;
  /** One page of the caller's jobs; `null` when the server has no listing (404, 405 or 501). */
  jobs(query?: JobsQuery): Promise<JobPage | null>;
  outputUrl(file: string): string;
  /** An output's bytes, fetched with the API key (an `<img>` cannot send it). */
  outputBlob(file: string): Promise<Blob>;
  /** A running job's live preview: the bytes behind a status record's `preview.url`. */
  previewBlob(url: string): Promise<Blob>;
  extras(): Promise<unknown>;
  /**
   * `PUT /api/extras`: store the extras document (JSON text) and queue the changed entries for
   * conversion. A 400 carries the field errors and a 409 the conflicting conversions in
   * `ApiError.body`.
   */
  saveExtras(text: string): Promise<ExtrasSaved>;
  /** `GET /api/models`: the model store and the recent conversions. */
  modelStore(): Promise<ModelStoreListing>;
  /** `DELETE /api/models/<name>`: every version of a stored model. */
  deleteModel(name: string): Promise<DeletedModel>;
  workerStatus(): Promise<WorkerStatus>;
  restartWorkers(): Promise<WorkerStatus>;
}

/** Strip trailing slashes so `root + '/api/…'` never doubles one. */
export function normaliseRoot(root: string): string {
  return root.replace(/\/+$/, '');
}

/** An error answer as an `ApiError`: its message is `{"error": …}` when JSON, else the status line. */
async function errorOf(res: Response): Promise<ApiError> {
  const text = await res.text().catch(() => '');
  let body: unknown = null;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON: an HTML error page. The status line says more than its markup would.
  }
  const fields = (body ?? {}) as { error?: unknown; title?: unknown; description?: unknown };
  const message = [fields.error, fields.description, fields.title].find((m): m is string => typeof m === 'string' && m !== '');
  return new ApiError('http', res.status, message ?? `${res.status} ${res.statusText}`.trim(), body, retryAfter(res));
}

/** `Retry-After` in seconds: the delay form only (the server sends no dates); null when absent or odd. */
function retryAfter(res: Response): number | null {
  const value = res.headers.get('Retry-After')?.trim() ?? '';
  return /^[0-9]{1,6}$/.test(value) ? Number(value) : null;
}

/** Check a list of job names against the server's per-call limit before sending it. */
function jobsQuery(names: string[]): string {
  if (names.length === 0) throw new Error('at least one job name is required');
  if (names.length > MAX_JOBS_PER_CALL) {
    throw new Error(`at most ${MAX_JOBS_PER_CALL} job names per call, got ${names.length}`);
  }
  return `jobs=${names.map(encodeURIComponent).join(',')}`;
}

/** The answers that mean "this server has no such route" rather than "the call went wrong". */
const ABSENT_ROUTE = new Set([404, 405, 501]);

export function createClient(options: ClientOptions): ApiClient {
  const root = normaliseRoot(options.root);
  const doFetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  /**
   * `Authorization: Bearer <API key>` on every call; on an admin call, the admin token instead when
   * there is one. The token goes in that header, never in the URL, where access logs, proxies and
   * Referer headers would keep it.
   */
  function withAuth(init: RequestInit, admin: boolean): RequestInit {
    const key = options.apiKey?.().trim() ?? '';
    const bearer = admin && options.token ? options.token : key;
    if (bearer === '') return init;
    return { ...init, headers: { ...(init.headers as Record<string, string> | undefined), Authorization: `Bearer ${bearer}` } };
  }

  async function send(path: string, init: RequestInit, timeoutMs?: number, admin = false): Promise<Response> {
    const controller = new AbortController();
    // The caller's signal (an event stream being closed) aborts the call as the timeout does.
    const caller = init.signal;
    if (caller?.aborted) controller.abort();
    caller?.addEventListener('abort', () => controller.abort(), { once: true });
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => controller.abort(), timeoutMs);
    let res: Response;
    try {
      res = await doFetch(`${root}${path}`, { ...withAuth(init, admin), signal: controller.signal });
    } catch (err) {
      if (controller.signal.aborted && !caller?.aborted) {
        throw new ApiError('timeout', 0, `no answer from ${root || 'the server'} within ${timeoutMs} ms`);
      }
      throw new ApiError('network', 0, `cannot reach ${root || 'the server'}: ${(err as Error).message}`);
    } finally {
      if (timer !== undefined) clearTimeout(timer);
    }
    if (!res.ok) throw await errorOf(res);
    return res;
  }

  async function call<T>(path: string, init: RequestInit = {}, timeoutMs?: number, admin = false): Promise<T> {
    return (await (await send(path, init, timeoutMs, admin)).json()) as T;
  }

  const get = <T>(path: string, timeoutMs?: number) => call<T>(path, { method: 'GET' }, timeoutMs);
  const outputPath = (file: string) => `/output/${file.split('/').map(encodeURIComponent).join('/')}`;

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

    async limits() {
      try {
        return await get<ServerLimits>('/api/settings/limits');
      } catch (err) {
        if (err instanceof ApiError && err.kind === 'http' && ABSENT_ROUTE.has(err.status)) return null;
        throw err;
      }
    },

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

    async jobEvents(names, signal) {
      const path = `/api/job/events?${jobsQuery(names)}`;
      let res: Response;
      try {
        res = await send(path, { method: 'GET', headers: { Accept: 'text/event-stream' }, signal });
      } catch (err) {
        if (err instanceof ApiError && err.kind === 'http' && ABSENT_ROUTE.has(err.status)) return null;
        throw err;
      }
      // A proxy or an older server may answer 200 with something else (an HTML page): no stream.
      if (!res.body || !(res.headers.get('Content-Type') ?? '').startsWith('text/event-stream')) {
        await res.body?.cancel().catch(() => {});
        return null;
      }
      return res.body;
    },

    async cancel(names) {
      // Our server answers a bare array; onnx-web wraps it in `results`. Accept both.
      const body = await call<CancelResult[] | { results: CancelResult[] }>(
        `/api/job/cancel?${jobsQuery(names)}`,
        { method: 'PUT' },
      );
      return Array.isArray(body) ? body : body.results;
    },

    async jobs(query = {}) {
      const search = new URLSearchParams();
      if (query.status) search.set('status', query.status);
      if (query.limit !== undefined) search.set('limit', String(query.limit));
      if (query.cursor) search.set('cursor', query.cursor);
      const qs = search.toString();
      try {
        const page = await get<Partial<JobPage>>(`/api/jobs${qs ? `?${qs}` : ''}`);
        return { jobs: Array.isArray(page.jobs) ? page.jobs : [], next: typeof page.next === 'string' && page.next !== '' ? page.next : null };
      } catch (err) {
        if (err instanceof ApiError && err.kind === 'http' && ABSENT_ROUTE.has(err.status)) return null;
        throw err;
      }
    },

    outputUrl: (file) => `${root}${outputPath(file)}`,
    outputBlob: async (file) => (await send(outputPath(file), { method: 'GET' })).blob(),
    previewBlob: async (url) => (await send(url, { method: 'GET' })).blob(),

    extras: () => call<unknown>('/api/extras', { method: 'GET' }, undefined, true),
    saveExtras: (text) =>
      call<ExtrasSaved>(
        '/api/extras',
        { method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: text },
        undefined,
        true,
      ),
    modelStore: () => call<ModelStoreListing>('/api/models', { method: 'GET' }, undefined, true),
    deleteModel: (name) =>
      call<DeletedModel>(`/api/models/${encodeURIComponent(name)}`, { method: 'DELETE' }, undefined, true),
    workerStatus: () => call<WorkerStatus>('/api/worker/status', { method: 'GET' }, undefined, true),
    restartWorkers: () => call<WorkerStatus>('/api/worker/restart', { method: 'POST' }, undefined, true),
  };
}
