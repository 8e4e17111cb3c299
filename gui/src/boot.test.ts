import { describe, expect, it } from 'vitest';
import { ApiError, type ApiClient } from './client/api';
import { connect } from './boot';
import { SERVER } from './test/fixtures';

function client(overrides: Partial<ApiClient>): ApiClient {
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
    jobs: ok({ jobs: [], next: null }),
    limits: ok(SERVER.limits),
    ...overrides,
  } as ApiClient;
}

describe('connect', () => {
  it('loads params and every list', async () => {
    const result = await connect(client({}));
    expect(result).toEqual({ kind: 'ready', server: SERVER, missing: [], jobsListing: true });
  });

  it('hides the jobs listing only where the server has none', async () => {
    const absent = await connect(client({ jobs: () => Promise.resolve(null) }));
    expect(absent.kind === 'ready' && absent.jobsListing).toBe(false);
    const failing = await connect(client({ jobs: () => Promise.reject(new ApiError('http', 500, 'db down')) }));
    expect(failing.kind === 'ready' && failing.jobsListing).toBe(true);
  });

  it('takes the upload limits where the server publishes them, and goes on without them elsewhere', async () => {
    const onnxWeb = await connect(client({ limits: () => Promise.resolve(null) }));
    expect(onnxWeb).toEqual({ kind: 'ready', server: { ...SERVER, limits: null }, missing: [], jobsListing: true });
    const failing = await connect(client({ limits: () => Promise.reject(new ApiError('http', 503, 'busy')) }));
    expect(failing.kind === 'ready' && failing.server.limits).toBe(null);
    expect(failing.kind === 'ready' && failing.missing).toEqual([]);
  });

  it('asks for an API key, rather than calling the server unreachable, when it refuses one', async () => {
    const result = await connect(client({ params: () => Promise.reject(new ApiError('http', 401, 'an API key is required')) }));
    expect(result).toEqual({ kind: 'unauthorised', message: 'an API key is required' });
  });

  it('calls an unanswered params request unreachable', async () => {
    const result = await connect(client({ params: () => Promise.reject(new ApiError('timeout', 0, 'no answer within 5000 ms')) }));
    expect(result).toEqual({ kind: 'unreachable', message: 'no answer within 5000 ms' });
  });

  it('refuses a server older than 0.10.0', async () => {
    const result = await connect(client({ params: () => Promise.resolve({ version: '0.9.0' }) }));
    expect(result).toEqual({ kind: 'too-old', version: '0.9.0' });
  });

  it('runs without a list that failed, and names it', async () => {
    const result = await connect(client({ wildcards: () => Promise.reject(new ApiError('http', 501, 'later')) }));
    expect(result.kind).toBe('ready');
    if (result.kind !== 'ready') return;
    expect(result.missing).toEqual(['wildcards']);
    expect(result.server.wildcards).toEqual([]);
  });
});
