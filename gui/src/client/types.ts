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
