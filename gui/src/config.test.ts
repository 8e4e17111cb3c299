import { describe, expect, it } from 'vitest';
import {
  adminTokenKey,
  compareVersions,
  DEFAULT_POLL_INTERVAL_MS,
  isSupportedVersion,
  keepAdminToken,
  resolveRuntimeConfig,
} from './config';

const at = (search: string) => ({ search, origin: 'http://gui.example:8080' });

describe('resolveRuntimeConfig', () => {
  it('uses the page origin when config.json leaves the root empty', () => {
    const rt = resolveRuntimeConfig({ api: { root: '' } }, at(''));
    expect(rt).toEqual({ root: 'http://gui.example:8080', interval: DEFAULT_POLL_INTERVAL_MS, token: '', lng: '' });
  });

  it('prefers config.json over the origin, and ?api= over both', () => {
    expect(resolveRuntimeConfig({ api: { root: 'http://a:5000/' } }, at('')).root).toBe('http://a:5000');
    expect(resolveRuntimeConfig({ api: { root: 'http://a:5000' } }, at('?api=http://b:1/')).root).toBe('http://b:1');
  });

  it('reads ?interval=, ?token= and ?lng=', () => {
    const rt = resolveRuntimeConfig({ api: { root: '' } }, at('?interval=750&token=s3cret&lng=de'));
    expect(rt.interval).toBe(750);
    expect(rt.token).toBe('s3cret');
    expect(rt.lng).toBe('de');
  });

  it('ignores a nonsense interval and floors a tiny one', () => {
    expect(resolveRuntimeConfig({ api: { root: '' } }, at('?interval=abc')).interval).toBe(DEFAULT_POLL_INTERVAL_MS);
    expect(resolveRuntimeConfig({ api: { root: '' } }, at('?interval=-5')).interval).toBe(DEFAULT_POLL_INTERVAL_MS);
    expect(resolveRuntimeConfig({ api: { root: '' } }, at('?interval=1')).interval).toBe(100);
  });
});

describe('versions', () => {
  it('compares numerically, with or without a v and pre-release tags', () => {
    expect(compareVersions('0.10.0', '0.9.9')).toBeGreaterThan(0);
    expect(compareVersions('v0.12.0', '0.12.0')).toBe(0);
    expect(compareVersions('0.13.0-dev', '0.13.0')).toBe(0);
    expect(compareVersions('0.9', '0.10.0')).toBeLessThan(0);
  });

  it('accepts 0.10.0 and newer only', () => {
    expect(isSupportedVersion('0.10.0')).toBe(true);
    expect(isSupportedVersion('v0.13.0')).toBe(true);
    expect(isSupportedVersion('1.0.0')).toBe(true);
    expect(isSupportedVersion('0.9.1')).toBe(false);
    expect(isSupportedVersion(undefined)).toBe(false);
    expect(isSupportedVersion('unknown')).toBe(false);
  });
});

describe('keepAdminToken', () => {
  const ROOT = 'http://gui.example';
  function page(href: string, stored: Record<string, string> = {}) {
    const replaced: string[] = [];
    return {
      replaced,
      stored,
      location: { href },
      history: { state: { tab: 'models' }, replaceState: (_: unknown, __: string, url?: string | URL | null) => void replaced.push(String(url)) },
      sessionStorage: { getItem: (k: string) => stored[k] ?? null, setItem: (k: string, v: string) => void (stored[k] = v) },
    };
  }

  it('takes ?token= out of the address bar, keeping the rest, and keeps the token for the tab', () => {
    const p = page('http://gui.example/?api=http://a:1&token=s3cret&lng=de#models');
    expect(keepAdminToken('s3cret', p, ROOT)).toBe('s3cret');
    expect(p.replaced).toEqual(['http://gui.example/?api=http%3A%2F%2Fa%3A1&lng=de#models']);
    expect(p.stored[adminTokenKey(ROOT)]).toBe('s3cret');
  });

  it('gives back the kept token after a reload without ?token=, and lets a new one replace it', () => {
    const p = page('http://gui.example/', { [adminTokenKey(ROOT)]: 'old' });
    expect(keepAdminToken('', p, ROOT)).toBe('old');
    expect(p.replaced).toEqual([]);
    expect(keepAdminToken('new', p, ROOT)).toBe('new');
    expect(p.stored[adminTokenKey(ROOT)]).toBe('new');
  });

  it('gives the kept token only to the api it came with, never to another ?api=', () => {
    const p = page('http://gui.example/?token=s3cret');
    keepAdminToken('s3cret', p, 'http://api.example');
    expect(keepAdminToken('', p, 'http://evil.example')).toBe('');
    expect(keepAdminToken('', p, 'http://api.example')).toBe('s3cret');
  });

  it('still hides the token when storage is switched off', () => {
    const p = page('http://gui.example/?token=t');
    const refusing = { ...p, sessionStorage: { getItem: () => { throw new Error('denied'); }, setItem: () => { throw new Error('denied'); } } };
    expect(keepAdminToken('t', refusing, ROOT)).toBe('t');
    expect(p.replaced).toEqual(['http://gui.example/']);
    expect(keepAdminToken('', refusing, ROOT)).toBe('');
  });
});
