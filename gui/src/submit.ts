/** Send a tab's request and turn the answer into a history card; shared by Generate and Retry. */
import { ApiError, type ApiClient, type ImageFiles } from './client/api';
import { buildGridChain, buildImageDocument } from './client/requests';
import type { JobStatus, Progress } from './client/types';
import type { Translate } from './i18n';
import type { HistoryItem } from './state/history';
import type { JobTab, TabParams } from './state/params';

const ZERO: Progress = { current: 0, total: 0 };

/** A submission answer has the status record's shape; fill what an older server leaves out. */
export function normaliseRecord(record: Partial<JobStatus> & { name: string }): JobStatus {
  return {
    ...record,
    name: record.name,
    status: record.status ?? 'pending',
    queue: record.queue ?? ZERO,
    stages: record.stages ?? ZERO,
    steps: record.steps ?? ZERO,
    tiles: record.tiles ?? ZERO,
  };
}

export interface Submitted {
  item: HistoryItem;
  files: ImageFiles;
}

/**
 * Submit: grid mode as a chain to `/api/job`, every other request to its tab's route with the
 * files from `buildFiles` (or, on Retry, the files the earlier job was sent with).
 */
export async function submitJob(client: ApiClient, tab: JobTab, params: TabParams, files: ImageFiles): Promise<Submitted> {
  const submittedAt = Date.now();
  if (tab === 'txt2img' && params.grid.enabled) {
    const record = await client.submitChain(buildGridChain(params));
    return { item: { name: record.name, tab, route: 'job', submittedAt, status: submittedRecord(record), params }, files: {} };
  }
  const record = await client.submit(tab, buildImageDocument(tab, params), files);
  return { item: { name: record.name, tab, route: tab, submittedAt, status: submittedRecord(record), params }, files };
}

/**
 * A submission's answer as a status record. onnx-web's submit answer counts the queue from 1, its
 * status route from 0 (contract §4.3); the card counts as the status route does.
 */
function submittedRecord(record: JobStatus): JobStatus {
  const status = normaliseRecord(record);
  return status.queue.total > 0 ? { ...status, queue: { ...status.queue, current: Math.max(0, status.queue.current - 1) } } : status;
}

/**
 * What to tell the user about a failed call, with the server's own message where it sent one.
 * A 401/403 points at the API key in Settings, or, for the admin routes, at the admin token.
 */
export function describeError(t: Translate, error: unknown, options: { admin?: boolean } = {}): string {
  if (error instanceof ApiError) {
    if (error.kind === 'network') return t('errors.network', { message: error.message });
    if (error.kind === 'timeout') return t('errors.timeout', { message: error.message });
    if (error.status === 400) return t('errors.badInput', { message: error.message });
    if (error.status === 501) return t('errors.notImplemented', { message: error.message });
    if (error.unauthorised) return t(options.admin ? 'errors.adminUnauthorised' : 'errors.unauthorised', { message: error.message });
    if (error.retryAfterS !== null) return t('errors.httpRetry', { status: error.status, message: error.message, seconds: error.retryAfterS });
    return t('errors.http', { status: error.status, message: error.message });
  }
  return t('errors.unexpected', { message: (error as Error)?.message ?? String(error) });
}
