import { describe, expect, it, vi } from 'vitest';
import type { JobStatus, JobStatusName } from './types';
import { batchNames, StatusPoller } from './poller';

const rec = (name: string, status: JobStatusName): JobStatus => ({
  name,
  status,
  queue: { current: 0, total: 0 },
  stages: { current: 0, total: 0 },
  steps: { current: 0, total: 0 },
  tiles: { current: 0, total: 0 },
});

/** Timers the test fires by hand, so rounds happen exactly when the test says. */
function manualTimers() {
  const pending: Array<{ fn: () => void; ms: number }> = [];
  return {
    setTimer: (fn: () => void, ms: number) => {
      const t = { fn, ms };
      pending.push(t);
      return t;
    },
    clearTimer: (h: unknown) => {
      const i = pending.indexOf(h as (typeof pending)[number]);
      if (i >= 0) pending.splice(i, 1);
    },
    pending,
  };
}

describe('batchNames', () => {
  it('splits into batches of at most ten, in order, without duplicates', () => {
    const names = Array.from({ length: 23 }, (_, i) => `j${i}`);
    const batches = batchNames([...names, 'j0']);
    expect(batches.map((b) => b.length)).toEqual([10, 10, 3]);
    expect(batches.flat()).toEqual(names);
    expect(batchNames([])).toEqual([]);
  });
});

describe('StatusPoller', () => {
  it('polls every watched name in calls of at most ten names', async () => {
    const calls: string[][] = [];
    const poller = new StatusPoller({
      fetchStatus: async (names) => {
        calls.push(names);
        return names.map((n) => rec(n, 'running'));
      },
      onRecords: () => {},
      onError: () => {},
      interval: 1000,
      ...manualTimers(),
    });
    poller.watch(Array.from({ length: 25 }, (_, i) => `job-${i}`));
    await poller.poll();
    expect(calls.map((c) => c.length)).toEqual([10, 10, 5]);
    expect(new Set(calls.flat()).size).toBe(25);
  });

  it('stops polling a job once it reaches a final state', async () => {
    const states: Record<string, JobStatusName> = { a: 'running', b: 'running', c: 'pending' };
    const seen: string[][] = [];
    const poller = new StatusPoller({
      fetchStatus: async (names) => {
        seen.push(names);
        return names.map((n) => rec(n, states[n]));
      },
      onRecords: () => {},
      onError: () => {},
      interval: 1000,
      ...manualTimers(),
    });
    poller.watch(['a', 'b', 'c']);
    await poller.poll();
    states.a = 'success';
    states.b = 'cancelled';
    await poller.poll();
    await poller.poll();
    expect(seen).toEqual([['a', 'b', 'c'], ['a', 'b', 'c'], ['c']]);
    expect(poller.names).toEqual(['c']);
  });

  it('reports errors per batch and health after a clean round', async () => {
    let fail = true;
    const onError = vi.fn();
    const onHealthy = vi.fn();
    const poller = new StatusPoller({
      fetchStatus: async (names) => {
        if (fail) throw new Error('down');
        return names.map((n) => rec(n, 'running'));
      },
      onRecords: () => {},
      onError,
      onHealthy,
      interval: 1000,
      ...manualTimers(),
    });
    poller.watch(['a']);
    await poller.poll();
    expect(onError).toHaveBeenCalledTimes(1);
    expect(onHealthy).not.toHaveBeenCalled();
    fail = false;
    await poller.poll();
    expect(onHealthy).toHaveBeenCalledTimes(1);
    expect(poller.names).toEqual(['a']);
  });

  it('schedules a quick first round for a new name, then rounds at the interval', async () => {
    const timers = manualTimers();
    const poller = new StatusPoller({
      fetchStatus: async (names) => names.map((n) => rec(n, 'running')),
      onRecords: () => {},
      onError: () => {},
      interval: 5000,
      ...timers,
    });
    poller.watch(['a']);
    expect(timers.pending.map((t) => t.ms)).toEqual([250]);
    poller.watch(['a']);
    expect(timers.pending).toHaveLength(1);
    timers.pending.shift()?.fn();
    await new Promise((r) => setTimeout(r, 0));
    expect(timers.pending.map((t) => t.ms)).toEqual([5000]);
    poller.stop();
    expect(timers.pending).toHaveLength(0);
  });

  it('calls off the next round once nothing is watched', async () => {
    const timers = manualTimers();
    const poller = new StatusPoller({
      fetchStatus: async (names) => names.map((n) => rec(n, 'running')),
      onRecords: () => {},
      onError: () => {},
      interval: 5000,
      ...timers,
    });
    poller.watch(['a', 'b']);
    poller.unwatch('a');
    expect(timers.pending).toHaveLength(1);
    poller.unwatch('b');
    expect(timers.pending).toHaveLength(0);
  });

  it('runs one round at a time; a round asked for meanwhile follows at once', async () => {
    let release: () => void = () => {};
    const timers = manualTimers();
    const fetchStatus = vi.fn(
      (names: string[]) => new Promise<JobStatus[]>((resolve) => (release = () => resolve(names.map((n) => rec(n, 'running'))))),
    );
    const poller = new StatusPoller({ fetchStatus, onRecords: () => {}, onError: () => {}, interval: 5000, ...timers });
    poller.watch(['a']);
    const first = poller.poll();
    await poller.poll();
    expect(fetchStatus).toHaveBeenCalledTimes(1);
    release();
    await first;
    expect(timers.pending.some((t) => t.ms === 0)).toBe(true);
  });
});
