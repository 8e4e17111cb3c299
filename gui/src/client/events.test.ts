import { describe, expect, it, vi } from 'vitest';
import { ApiError } from './api';
import {
  STREAM_ABSENT_RETRY_MS,
  STREAM_BACKOFF_MAX_MS,
  STREAM_REOPEN_MS,
  STREAM_RETRY_MS,
  STREAM_SILENCE_MS,
  StatusFeed,
} from './events';
import type { JobStatus, JobStatusName } from './types';

const rec = (name: string, status: JobStatusName, extra: Partial<JobStatus> = {}): JobStatus => ({
  name,
  status,
  queue: { current: 0, total: 0 },
  stages: { current: 0, total: 0 },
  steps: { current: 0, total: 0 },
  tiles: { current: 0, total: 0 },
  ...extra,
});

const event = (type: string, data: unknown, id = 1) => `id: ${id}\nevent: ${type}\ndata: ${JSON.stringify(data)}\n\n`;

/** A response body the test writes into, as the server would. */
function sseBody() {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const body = new ReadableStream<Uint8Array>({ start: (c) => void (controller = c) });
  const bytes = new TextEncoder();
  return {
    body,
    send: (text: string | Uint8Array) => controller.enqueue(typeof text === 'string' ? bytes.encode(text) : text),
    close: () => controller.close(),
    fail: () => controller.error(new TypeError('network error')),
  };
}

/** Let the feed's reads and awaits run (its own timers are the test's, fired by hand). */
const flush = () => new Promise((resolve) => setTimeout(resolve, 0));

/** A feed with timers and clock under the test's control; every call and record is kept. */
function setup(open: (names: string[], signal: AbortSignal) => Promise<ReadableStream<Uint8Array> | null>) {
  const pending: Array<{ fn: () => void; ms: number }> = [];
  const clock = { now: 0 };
  const records: JobStatus[] = [];
  const opened: Array<{ names: string[]; signal: AbortSignal }> = [];
  const polled: string[][] = [];
  const onHealthy = vi.fn();
  const feed = new StatusFeed({
    openStream: (names, signal) => {
      opened.push({ names, signal });
      return open(names, signal);
    },
    fetchStatus: async (names) => {
      polled.push(names);
      return names.map((n) => rec(n, 'running'));
    },
    onRecords: (r) => records.push(...r),
    onError: () => {},
    onHealthy,
    interval: 5000,
    now: () => clock.now,
    setTimer: (fn, ms) => {
      const t = { fn, ms };
      pending.push(t);
      return t;
    },
    clearTimer: (h) => {
      const i = pending.indexOf(h as (typeof pending)[number]);
      if (i >= 0) pending.splice(i, 1);
    },
  });
  /** Fire the first pending timer of `ms` and let what it starts run. */
  const fire = async (ms: number) => {
    const i = pending.findIndex((t) => t.ms === ms);
    if (i < 0) throw new Error(`no timer of ${ms} ms; pending: ${pending.map((t) => t.ms).join(', ')}`);
    const [t] = pending.splice(i, 1);
    t.fn();
    await flush();
    await flush();
  };
  const waits = () => pending.map((t) => t.ms).sort((a, b) => a - b);
  return { feed, records, opened, polled, onHealthy, clock, fire, waits };
}

describe('StatusFeed', () => {
  it('hands on each record as it arrives; a final one ends the watch, `end` closes, and nothing is polled', async () => {
    const server = sseBody();
    const t = setup(async () => server.body);
    t.feed.watch(['a']);
    expect(t.opened.map((o) => o.names)).toEqual([['a']]);
    // Until the stream's first record, the poller keeps the name: an open may yet be refused.
    expect(t.waits()).toEqual([250, STREAM_SILENCE_MS]);

    server.send(`retry: 2000\n\n${event('status', rec('a', 'running', { steps: { current: 1, total: 4 } }))}`);
    await flush();
    expect(t.records.map((r) => [r.status, r.steps.current])).toEqual([['running', 1]]);
    expect(t.onHealthy).toHaveBeenCalledTimes(1);
    expect(t.feed.streamed).toEqual(['a']);
    expect(t.waits()).toEqual([STREAM_SILENCE_MS]);

    // A success record split mid-way through a multi-byte character (the prompt's "é").
    const success = new TextEncoder().encode(event('status', rec('a', 'success', { outputs: ['a_0.png'], metadata: [{ params: { prompt: 'café' } }] }), 2));
    const cut = success.indexOf(0xc3) + 1;
    server.send(success.slice(0, cut));
    await flush();
    expect(t.records).toHaveLength(1);
    server.send(success.slice(cut));
    await flush();
    expect(t.records.at(-1)).toMatchObject({ status: 'success', outputs: ['a_0.png'], metadata: [{ params: { prompt: 'café' } }] });
    expect(t.feed.names).toEqual([]);

    server.send(event('end', { jobs: ['a'] }, 3));
    await flush();
    expect(t.feed.streamed).toEqual([]);
    expect(t.waits()).toEqual([]);
    expect(t.polled).toEqual([]);
  });

  it('polls where the server has no stream (404, 405, 501) and tries again much later', async () => {
    const server = sseBody();
    let answer: ReadableStream<Uint8Array> | null = null;
    const t = setup(async () => answer);
    t.feed.watch(['a']);
    await flush();
    expect(t.feed.streamed).toEqual([]);
    expect(t.waits()).toEqual([250, STREAM_ABSENT_RETRY_MS]);
    await t.fire(250);
    expect(t.polled).toEqual([['a']]);
    expect(t.records.map((r) => r.status)).toEqual(['running']);

    answer = server.body;
    await t.fire(STREAM_ABSENT_RETRY_MS);
    expect(t.opened).toHaveLength(2);
    server.send(event('status', rec('a', 'running')));
    await flush();
    expect(t.feed.streamed).toEqual(['a']);
    expect(t.waits()).toEqual([STREAM_SILENCE_MS]);
  });

  it('polls while the server is out of stream places (503, 429) or unreachable, trying again with doubling waits', async () => {
    const answers: Array<() => Promise<ReadableStream<Uint8Array> | null>> = [
      () => Promise.reject(new ApiError('http', 503, 'too many event streams are open on this server')),
      () => Promise.reject(new ApiError('http', 429, 'at most 4 event streams per owner')),
      () => Promise.reject(new ApiError('network', 0, 'cannot reach the server')),
    ];
    const t = setup(() => (answers.shift() ?? (() => Promise.reject(new Error('unexpected'))))());
    t.feed.watch(['a']);
    await flush();
    expect(t.waits()).toEqual([250, STREAM_RETRY_MS]);
    await t.fire(250);
    expect(t.polled).toEqual([['a']]);
    await t.fire(STREAM_RETRY_MS);
    expect(t.waits()).toEqual([STREAM_RETRY_MS * 2, 5000]);
    await t.fire(STREAM_RETRY_MS * 2);
    expect(t.waits()).toEqual([5000, STREAM_RETRY_MS * 4]);
    expect(t.opened).toHaveLength(3);
    // The poller kept its rounds the whole time.
    await t.fire(5000);
    expect(t.polled).toEqual([['a'], ['a']]);
  });

  it('never waits longer than the cap between tries', async () => {
    const t = setup(() => Promise.reject(new ApiError('network', 0, 'down')));
    t.feed.watch(['a']);
    await flush();
    for (let wait = STREAM_RETRY_MS; wait < STREAM_BACKOFF_MAX_MS; wait *= 2) await t.fire(wait);
    expect(t.waits()).toContain(STREAM_BACKOFF_MAX_MS);
    await t.fire(STREAM_BACKOFF_MAX_MS);
    expect(t.waits()).toContain(STREAM_BACKOFF_MAX_MS);
  });

  it('hands the names to the poller at once when a stream breaks, and tries again after the server’s retry', async () => {
    const first = sseBody();
    const second = sseBody();
    const bodies = [first.body, second.body];
    const t = setup(async () => bodies.shift() ?? null);
    t.feed.watch(['a']);
    first.send(`retry: 700\n\n${event('status', rec('a', 'running'))}`);
    await flush();
    first.fail();
    await flush();
    // The stream delivered before it broke, so this is no failure in a row: the plain retry.
    expect(t.waits()).toEqual([250, 700]);
    await t.fire(250);
    expect(t.polled).toEqual([['a']]);
    await t.fire(700);
    expect(t.opened.map((o) => o.names)).toEqual([['a'], ['a']]);

    // A stream that ends without `end` is a break too; this one delivered nothing, so the
    // failures in a row double the wait. The poller went on meanwhile.
    second.close();
    await flush();
    expect(t.waits()).toEqual([700 * 2, 5000]);
  });

  it('treats a silent stream (no heartbeat) and a record that will not parse as broken', async () => {
    const silent = sseBody();
    const garbled = sseBody();
    const bodies = [silent.body, garbled.body];
    const t = setup(async () => bodies.shift() ?? null);
    t.feed.watch(['a']);
    await flush();
    await t.fire(STREAM_SILENCE_MS);
    expect(t.opened[0].signal.aborted).toBe(true);
    expect(t.waits()).toEqual([250, STREAM_RETRY_MS]);

    await t.fire(STREAM_RETRY_MS);
    expect(t.opened).toHaveLength(2);
    garbled.send('event: status\ndata: {not json\n\n');
    await flush();
    expect(t.records).toEqual([]);
    expect(t.waits()).toEqual([250, STREAM_RETRY_MS * 2]);
  });

  it('streams at most ten names; the rest are polled until the next stream takes them', async () => {
    const first = sseBody();
    const second = sseBody();
    const bodies = [first.body, second.body];
    const t = setup(async () => bodies.shift() ?? null);
    const names = Array.from({ length: 12 }, (_, i) => `j${i}`);
    t.feed.watch(names);
    expect(t.opened[0].names).toEqual(names.slice(0, 10));
    first.send(names.slice(0, 10).map((n, i) => event('status', rec(n, 'running'), i)).join(''));
    await flush();
    expect(t.feed.streamed).toEqual(names.slice(0, 10));
    await t.fire(250);
    expect(t.polled).toEqual([['j10', 'j11']]);

    first.send(names.slice(0, 10).map((n, i) => event('status', rec(n, 'success'), i + 10)).join('') + event('end', { jobs: names.slice(0, 10) }, 21));
    await flush();
    await flush();
    expect(t.opened.map((o) => o.names)).toEqual([names.slice(0, 10), ['j10', 'j11']]);
    expect(t.feed.names).toEqual(['j10', 'j11']);
    second.send(event('status', rec('j10', 'running')) + event('status', rec('j11', 'pending')));
    await flush();
    expect(t.feed.streamed).toEqual(['j10', 'j11']);
    expect(t.waits()).toEqual([STREAM_SILENCE_MS]);
  });

  it('adds a new name by reopening the stream, not more often than every STREAM_REOPEN_MS; it is polled meanwhile', async () => {
    const bodies = [sseBody(), sseBody(), sseBody()];
    const t = setup(async () => bodies[t.opened.length - 1].body);
    t.feed.watch(['a']);
    bodies[0].send(event('status', rec('a', 'running')));
    await flush();
    t.clock.now = 1000;
    t.feed.watch(['a', 'b']);
    expect(t.opened).toHaveLength(1);
    expect(t.waits()).toEqual([250, STREAM_REOPEN_MS - 1000, STREAM_SILENCE_MS]);
    await t.fire(250);
    expect(t.polled).toEqual([['b']]);

    t.clock.now = STREAM_REOPEN_MS;
    await t.fire(STREAM_REOPEN_MS - 1000);
    expect(t.opened[0].signal.aborted).toBe(true);
    expect(t.opened.map((o) => o.names)).toEqual([['a'], ['a', 'b']]);
    bodies[1].send(event('status', rec('a', 'running')) + event('status', rec('b', 'pending')));
    await flush();
    expect(t.feed.streamed).toEqual(['a', 'b']);
    // The stream closed on purpose is no failure: no retry wait, and nothing is polled.
    expect(t.waits()).toEqual([STREAM_SILENCE_MS]);

    t.clock.now = 3 * STREAM_REOPEN_MS;
    t.feed.watch(['c']);
    expect(t.opened.map((o) => o.names).at(-1)).toEqual(['a', 'b', 'c']);
  });

  it('does not reopen for a new name that ended (polled) before its turn came', async () => {
    const first = sseBody();
    const t = setup(async () => first.body);
    t.feed.watch(['a']);
    first.send(event('status', rec('a', 'running')));
    await flush();
    t.feed.watch(['b']);
    expect(t.waits()).toEqual([250, STREAM_REOPEN_MS, STREAM_SILENCE_MS]);
    t.feed.unwatch('b');
    await t.fire(STREAM_REOPEN_MS);
    expect(t.opened).toHaveLength(1);
    expect(t.opened[0].signal.aborted).toBe(false);
  });

  it('closes a stream none of whose names is watched any more, and everything on stop', async () => {
    const t = setup(async () => sseBody().body);
    t.feed.watch(['a']);
    await flush();
    t.feed.unwatch('a');
    expect(t.opened[0].signal.aborted).toBe(true);
    expect(t.feed.streamed).toEqual([]);

    t.feed.watch(['b']);
    await flush();
    t.feed.stop();
    expect(t.opened[1].signal.aborted).toBe(true);
    await flush();
    expect(t.waits()).toEqual([]);
    t.feed.watch(['c']);
    expect(t.opened).toHaveLength(2);
  });
});
