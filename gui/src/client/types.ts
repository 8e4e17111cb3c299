/** Shapes of what the server sends and receives (spec/contract.md §4, §5, §7.3). */

export interface NumberParam {
  default: number;
  min: number;
  max: number;
  step?: number;
}

export interface StringParam {
  default: string;
  keys?: string[];
}

export interface BooleanParam {
  default: boolean;
}

/** `GET /api/settings/params`: params.json, one entry per parameter plus version and motd. */
export interface ServerParams {
  version: string;
  motd?: Record<string, string>;
  [key: string]: unknown;
}

/**
 * `GET /api/settings/limits` (ours; onnx-web has no such route): the sizes past which the server
 * refuses a submission, so an image can be refused in its slot instead of after its upload.
 */
export interface ServerLimits {
  /** Bytes of the whole request body (413). */
  maxBodyBytes: number;
  /** Width times height of one upload (413) and of the size asked for (400). */
  maxImagePixels: number;
  /** An upload's longer side (400). */
  maxImageSide: number;
  /** Any image a job makes at any stage (400). */
  maxOutputPixels: number;
}

export interface NetworkModel {
  name: string;
  type: 'control' | 'inversion' | 'lora' | string;
  tokens: string[];
}

export interface ModelLists {
  correction: string[];
  diffusion: string[];
  networks: NetworkModel[];
  upscaling: string[];
}

export interface FilterLists {
  mask: string[];
  prompt: string[];
  source: string[];
}

/** Language → namespace → nested strings (`GET /api/settings/strings`). */
export type ServerStrings = Record<string, Record<string, unknown>>;

export interface Progress {
  current: number;
  total: number;
}

export type JobStatusName = 'pending' | 'running' | 'success' | 'failed' | 'cancelled' | 'unknown';

export interface ImageMetadata {
  input_size?: { width: number; height: number };
  outputs?: string[];
  params?: Record<string, unknown>;
  models?: Array<{ name: string; hash?: string; weight?: number }>;
  loras?: Array<{ name: string; weight: number; hash?: string }>;
  inversions?: Array<{ name: string; weight: number; hash?: string }>;
  size?: { width: number; height: number };
  highres?: Record<string, unknown>;
  upscale?: Record<string, unknown>;
  border?: Record<string, number>;
}

/** One record of `GET /api/job/status`, and the reply to a submission. */
export interface JobStatus {
  name: string;
  status: JobStatusName;
  queue: Progress;
  stages: Progress;
  steps: Progress;
  tiles: Progress;
  /** Why a job failed: `oom`, `storage`, `error`, `cancelled`, … (a code, translated by the GUI). */
  reason?: string;
  /** A user-facing message about the failure; never a traceback. */
  error?: string;
  outputs?: string[];
  thumbnails?: string[];
  metadata?: ImageMetadata[];
  /** Ours, while a diffusion job runs: the latest approximate image of its latents, and its step. */
  preview?: { url: string; step: number };
  /** Ours, on a pending job whose earlier attempt failed: the attempt it waits to run, and from when. */
  /** Ours: the job waits to run again; `reason` is why its last attempt ended (`storage`, `rescued` …). */
  retry?: { attempt: number; maxAttempts: number; after?: string; reason?: string };
}

/** `GET /api/jobs`: one page of the caller's jobs, newest first, and the cursor of the next. */
export interface JobPage {
  jobs: JobStatus[];
  next: string | null;
}

/** The filters `GET /api/jobs?status=` takes; '' lists every state. */
export const JOB_FILTERS = ['', 'pending', 'running', 'success', 'failed', 'cancelled'] as const;
export type JobFilter = (typeof JOB_FILTERS)[number];

export interface CancelResult {
  name: string;
  status: JobStatusName;
}

/** The routes that queue a job. `job` takes a chain document (grid mode). */
export type JobRoute = 'txt2img' | 'img2img' | 'inpaint' | 'upscale' | 'blend' | 'job';

/** One entry of an extras list: the fields this GUI edits, and any others it keeps as they are. */
export type ExtrasEntry = Record<string, unknown>;

/** The lists of the extras document (onnx-web's model catalogue); `strings` is kept as is. */
export const EXTRAS_SECTIONS = ['diffusion', 'correction', 'upscaling', 'networks', 'sources'] as const;
export type ExtrasSection = (typeof EXTRAS_SECTIONS)[number];

/** The extras document: the five lists, `strings`, and whatever else the file holds. */
export type ExtrasDocument = Partial<Record<ExtrasSection, ExtrasEntry[]>> & Record<string, unknown>;

export type ConversionState = 'pending' | 'running' | 'success' | 'failed' | 'cancelled';
export type ConversionStage = 'download' | 'convert' | 'publish';

/** A conversion job as `PUT /api/extras` started it. */
export interface StartedConversion {
  name: string;
  section: string;
  job: string;
  state: string;
}

/** `PUT /api/extras` 200: the file was stored and the changed entries queued for conversion. */
export interface ExtrasSaved {
  file: string;
  version: number;
  successful: string[];
  /** `[name, message]` pairs. */
  errors: Array<[string, string]>;
  conversions: StartedConversion[];
  unchanged: string[];
  skipped: Array<{ name: string; reason: string }>;
}

/** `PUT /api/extras` 400: the rules the document broke; `field` is a path like `diffusion[1].source`. */
export interface ExtrasRejected {
  error: string;
  errors: Array<{ field: string; rule: string }>;
}

/** `PUT /api/extras` 409: entries whose previous conversion is still pending or running. */
export interface ExtrasConflicted {
  error: string;
  conflicts: Array<{ name: string; job: string }>;
}

/** A model of the store (`GET /api/models`). */
export interface StoredModel {
  name: string;
  kind: string;
  family: string | null;
  content_hash: string;
  size_bytes: number;
  state: 'publishing' | 'ready' | 'deleting';
  created: string;
  labels: Record<string, string>;
}

/** A conversion job, with the stage it is in (`GET /api/models`). */
export interface Conversion {
  job: string;
  name: string;
  section: string;
  state: ConversionState;
  stage: ConversionStage | null;
  progress: Progress;
  reason: string | null;
  created: string;
  updated: string;
}

/** `GET /api/models`: the store's models and the 50 most recent conversions, newest first. */
export interface ModelStoreListing {
  models: StoredModel[];
  conversions: Conversion[];
}

/** `DELETE /api/models/<name>` 200. */
export interface DeletedModel {
  name: string;
  versions: number;
}

/** One worker of `GET /api/worker/status`'s `details`. */
export interface WorkerDetail {
  id: string;
  platform: string;
  device: string;
  providers: string[];
  models: string[];
  version: string;
  jobs: number;
  started: string;
  seen: string;
  cached_models?: string[];
  heartbeat_age_s?: number;
  job?: string | null;
  loading?: { model: string; current: number; total: number } | null;
}

/** `GET /api/worker/status` (and the answer to a restart): onnx-web's lists, and our details. */
export interface WorkerStatus {
  jobs?: unknown[];
  workers?: unknown[];
  details?: WorkerDetail[];
}
