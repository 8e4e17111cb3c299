import { describe, expect, it } from 'vitest';
import type { JobStatus, JobStatusName } from '../client/types';
import { SERVER } from '../test/fixtures';
import { addHistory, applyStatus, type HistoryItem, outputSeed, progressFraction, removeHistory, reuseParams, unfinishedNames } from './history';
import { defaultTabParams } from './params';

const params = defaultTabParams('txt2img', SERVER, { prompt: '', scheduler: '' });
const status = (name: string, s: JobStatusName, steps = { current: 0, total: 0 }): JobStatus => ({
  name,
  status: s,
  queue: { current: 0, total: 0 },
  stages: { current: 0, total: 1 },
  steps,
  tiles: { current: 0, total: 0 },
});
const item = (name: string, s: JobStatusName = 'pending'): HistoryItem => ({
  name,
  tab: 'txt2img',
  route: 'txt2img',
  submittedAt: 0,
  status: status(name, s),
  params,
});

describe('history', () => {
  it('puts new jobs first, replaces a same-named card and keeps at most the limit', () => {
    let h: HistoryItem[] = [];
    for (const n of ['a', 'b', 'c']) h = addHistory(h, item(n), 2);
    expect(h.map((x) => x.name)).toEqual(['c', 'b']);
    h = addHistory(h, item('b', 'running'), 2);
    expect(h.map((x) => [x.name, x.status.status])).toEqual([['b', 'running'], ['c', 'pending']]);
    expect(removeHistory(h, 'b').map((x) => x.name)).toEqual(['c']);
  });

  it('applies status records by name and keeps the list identical when nothing changed', () => {
    const h = [item('a'), item('b')];
    const next = applyStatus(h, [status('b', 'running', { current: 3, total: 10 }), status('zzz', 'success')]);
    expect(next[1].status.steps.current).toBe(3);
    expect(next[0]).toBe(h[0]);
    expect(applyStatus(next, [status('b', 'running', { current: 3, total: 10 })])).toBe(next);
  });

  it('never moves a settled card back (a late record after a cancel)', () => {
    const h = [item('a', 'cancelled')];
    expect(applyStatus(h, [status('a', 'running')])[0].status.status).toBe('cancelled');
  });

  it('names only pending and running jobs as unfinished', () => {
    const h = ['pending', 'running', 'success', 'failed', 'cancelled', 'unknown'].map((s) => item(s, s as JobStatusName));
    expect(unfinishedNames(h)).toEqual(['pending', 'running']);
  });

  it('computes progress from steps, never 100% until success', () => {
    expect(progressFraction(status('a', 'pending'))).toBeNull();
    expect(progressFraction(status('a', 'running', { current: 5, total: 20 }))).toBe(0.25);
    expect(progressFraction(status('a', 'running', { current: 120, total: 78 }))).toBe(0.99);
    expect(progressFraction(status('a', 'success'))).toBe(1);
  });

  it("reuses an output's own seed from its metadata, keeping the rest as sent", () => {
    const sent = { ...item('a', 'success'), params: { ...params, seed: -1, steps: 7 } };
    const made = { ...sent, status: { ...sent.status, outputs: ['a_0.png', 'a_1.png'], metadata: [{ params: { seed: 42 } }, { params: { seed: '43' } }] } };
    expect(reuseParams(made, 0)).toMatchObject({ seed: 42, steps: 7 });
    expect(reuseParams(made, 1).seed).toBe(43);
    // No recorded seed (an older server): the parameters as sent.
    expect(reuseParams(sent, 0)).toBe(sent.params);
    expect(outputSeed({ ...made, status: { ...made.status, metadata: [{ params: { seed: -1 } }] } }, 0)).toBeNull();
  });
});
