/** Where the GUI finds its server: `config.json` beside the page, overridden by the page's query. */

/** onnx-web's default poll interval (contract §13.1). */
export const DEFAULT_POLL_INTERVAL_MS = 5000;
/** Below this the GUI would poll faster than the server updates progress; it is a floor, not a default. */
export const MIN_POLL_INTERVAL_MS = 100;
/** The oldest server version the GUI speaks to (contract §13.1). */
export const MIN_SERVER_VERSION = '0.10.0';

export interface ClientConfig {
  api: { root: string };
}

export interface RuntimeConfig {
  /** API root without a trailing slash; the page's own origin unless configured. */
  root: string;
  interval: number;
  token: string;
  /** Language forced by `?lng=`; empty when the saved or browser language applies. */
  lng: string;
}

/** Read `config.json`; a missing or broken file means "the api is this page's origin". */
export async function loadClientConfig(fetchFn: typeof fetch = fetch): Promise<ClientConfig> {
  try {
    const res = await fetchFn('./config.json', { cache: 'no-store' });
    if (!res.ok) return { api: { root: '' } };
    const body = (await res.json()) as Partial<ClientConfig>;
    return { api: { root: typeof body.api?.root === 'string' ? body.api.root : '' } };
  } catch {
    return { api: { root: '' } };
  }
}

/** Combine config.json with `?api=`, `?interval=`, `?token=` and `?lng=` as onnx-web does. */
export function resolveRuntimeConfig(config: ClientConfig, location: { search: string; origin: string }): RuntimeConfig {
  const query = new URLSearchParams(location.search);
  const root = (query.get('api') || config.api.root || location.origin).replace(/\/+$/, '');
  const rawInterval = Number(query.get('interval'));
  const interval =
    Number.isFinite(rawInterval) && rawInterval > 0
      ? Math.max(MIN_POLL_INTERVAL_MS, Math.round(rawInterval))
      : DEFAULT_POLL_INTERVAL_MS;
  return { root, interval, token: query.get('token') ?? '', lng: query.get('lng') ?? '' };
}

/** Where `keepAdminToken` keeps this tab's admin token for the api at `root`. */
export function adminTokenKey(root: string): string {
  return `onnx-web-cluster.admin-token ${root}`;
}

interface PageWindow {
  location: { href: string };
  history: Pick<History, 'replaceState' | 'state'>;
  sessionStorage: Pick<Storage, 'getItem' | 'setItem'>;
}

/**
 * The admin token of `?token=` (onnx-web's admin link) taken out of the address bar, so that it
 * stays out of the history, bookmarks, screenshots and links shared from the page; kept for this
 * tab in session storage, so a reload keeps the Models tab's admin tools. Without `?token=`, the
 * token this tab kept for the api at `root`, and only that api: a later link to this page with
 * another `?api=` must not send it the token. A new `?token=` replaces it.
 */
export function keepAdminToken(token: string, page: PageWindow, root: string): string {
  try {
    if (token === '') return page.sessionStorage.getItem(adminTokenKey(root)) ?? '';
    page.sessionStorage.setItem(adminTokenKey(root), token);
  } catch {
    // Storage switched off: the token lasts as long as the page.
    if (token === '') return '';
  }
  const url = new URL(page.location.href);
  url.searchParams.delete('token');
  page.history.replaceState(page.history.state, '', url.toString());
  return token;
}

/** Compare dotted versions ("v0.12.0", "0.13.0-dev"): negative when a < b. Pre-release tags are ignored. */
export function compareVersions(a: string, b: string): number {
  const parts = (v: string) =>
    v
      .trim()
      .replace(/^v/i, '')
      .split(/[-+]/)[0]
      .split('.')
      .map((p) => Number.parseInt(p, 10) || 0);
  const pa = parts(a);
  const pb = parts(b);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

export function isSupportedVersion(version: unknown): boolean {
  return typeof version === 'string' && /\d/.test(version) && compareVersions(version, MIN_SERVER_VERSION) >= 0;
}
