/** Start-up (contract §13.1): params first, with a timeout and a version check, then every list. */
import { ApiError, type ApiClient } from './client/api';
import { isSupportedVersion } from './config';
import { EMPTY_SERVER_LISTS, type ServerInfo } from './state/params';

export type BootResult =
  | { kind: 'ready'; server: ServerInfo; missing: string[]; jobsListing: boolean }
  | { kind: 'unreachable'; message: string }
  | { kind: 'unauthorised'; message: string }
  | { kind: 'too-old'; version: string };

type Lists = Omit<ServerInfo, 'params' | 'limits'>;

/**
 * Whether the server lists the caller's jobs (`GET /api/jobs`). `jobs` answers `null` for a
 * server without the route; any other failure still means the route exists, and the Jobs view
 * shows that error when opened.
 */
async function hasJobsListing(client: ApiClient): Promise<boolean> {
  try {
    return (await client.jobs({ limit: 1 })) !== null;
  } catch {
    return true;
  }
}

/**
 * The params decide whether the GUI can run at all; the lists only shape controls, so one that
 * fails leaves its controls empty and is named in `missing` instead of stopping the app.
 */
export async function connect(client: ApiClient): Promise<BootResult> {
  let params: ServerInfo['params'];
  try {
    params = await client.params();
  } catch (error) {
    // A server in keys mode refuses even the settings without a valid key: say so, not "unreachable".
    if (error instanceof ApiError && error.unauthorised) return { kind: 'unauthorised', message: error.message };
    return { kind: 'unreachable', message: (error as Error).message };
  }
  if (!isSupportedVersion(params.version)) return { kind: 'too-old', version: String(params.version ?? '?') };

  const loaders: { [K in keyof Lists]: () => Promise<Lists[K]> } = {
    models: client.models,
    pipelines: client.pipelines,
    platforms: client.platforms,
    schedulers: client.schedulers,
    filters: client.filters,
    noises: client.noises,
    wildcards: client.wildcards,
    strings: client.strings,
  };
  const keys = Object.keys(loaders) as Array<keyof Lists>;
  const [results, jobsListing, limits] = await Promise.all([
    Promise.allSettled(keys.map((k) => loaders[k]())),
    hasJobsListing(client),
    // Only a courtesy check before uploading: without them the server still refuses what is too large.
    client.limits().catch(() => null),
  ]);
  const lists: Record<string, unknown> = { ...EMPTY_SERVER_LISTS };
  const missing: string[] = [];
  results.forEach((result, i) => {
    if (result.status === 'fulfilled' && result.value !== null && typeof result.value === 'object') {
      lists[keys[i]] = keys[i] === 'models' || keys[i] === 'filters'
        ? { ...(EMPTY_SERVER_LISTS[keys[i]] as object), ...(result.value as object) }
        : result.value;
    } else {
      missing.push(keys[i]);
    }
  });
  return { kind: 'ready', server: { ...(lists as Lists), params, limits }, missing, jobsListing };
}
