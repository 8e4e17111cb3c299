/**
 * Job status pushed by `GET /api/job/events`, with the poller as the fallback for everything: a
 * name no open stream covers is polled, and a server without streams, or out of stream places,
 * or a stream that breaks, leaves every name to the poller until the next try.
 */
import { MAX_JOBS_PER_CALL } from './api';
import { isFinal, POLLER_DEFAULTS, type PollerOptions, StatusPoller } from './poller';
import { SseParser } from './sse';
import type { JobStatus } from './types';

/** The wait before trying a stream again until the server's `retry:` says otherwise. */
export const STREAM_RETRY_MS = 2000;
/** Failures in a row double the wait, up to this. */
export const STREAM_BACKOFF_MAX_MS = 60_000;
/** After a 404, 405 or 501: a server without streams does not grow one soon. */
export const STREAM_ABSENT_RETRY_MS = 300_000;
/** Three missed heartbeats (the server sends one every 15 s): the stream has stalled. */
export const STREAM_SILENCE_MS = 45_000;
/**
 * The least time between reopening a stream to add new names. A stream the page abandons keeps
 * one of the server's few stream places until the server next writes to it (at most a heartbeat).
 */
export const STREAM_REOPEN_MS = 10_000;

export interface FeedOptions extends PollerOptions {
  /** Open the event stream of at most ten names; `null` when the server has none. */
  openStream: (names: string[], signal: AbortSignal) => Promise<ReadableStream<Uint8Array> | null>;
  now?: () => number;
}

/** How a stream stopped: its `end` event, no such route, anything else, or closed by the feed. */
type Ending = 'end' | 'absent' | 'broken' | 'closed';

interface Stream {
  names: Set<string>;
  controller: AbortController;
  /** Closed by the feed on purpose (new names, none left, stop), not broken. */
  closing: boolean;
  /** At least one record arrived: the server does stream, so a break afterwards is no failure. */
  delivered: boolean;
}

/**
 * The status source behind the cards. One stream at a time, for the first ten watched names, so a
 * page holds one of the server's stream places at most; a record arrives as the server writes it,
 * and a final one leaves the watch list at once. Names beyond the stream's ten are polled.
 */
export class StatusFeed {
  private readonly watched = new Set<string>();
  private readonly options: Required<FeedOptions>;
  private readonly poller: StatusPoller;
  private stream: Stream | null = null;
  /** While set, no stream opens and the poller has every name. */
  private backoff: unknown = null;
  private reopenTimer: unknown = null;
  private failures = 0;
  private retryMs = STREAM_RETRY_MS;
  private openedAt = Number.NEGATIVE_INFINITY;
  private stopped = false;

  constructor(options: FeedOptions) {
    this.options = { ...POLLER_DEFAULTS, now: () => Date.now(), ...options };
    this.poller = new StatusPoller({ ...this.options, onRecords: (records) => this.deliver(records) });
  }

  get names(): string[] {
    return [...this.watched];
  }

  /** The names the open stream covers (empty while polling only, or while it opens). */
  get streamed(): string[] {
    return this.stream?.delivered ? [...this.stream.names] : [];
  }

  watch(names: Iterable<string>): void {
    let added = false;
    for (const name of names) {
      if (!this.watched.has(name)) {
        this.watched.add(name);
        added = true;
      }
    }
    if (!added) return;
    if (this.stream && this.stream.names.size < MAX_JOBS_PER_CALL) this.reopenSoon();
    else this.connect();
    this.assign();
  }

  unwatch(name: string): void {
    this.watched.delete(name);
    this.poller.unwatch(name);
    const stream = this.stream;
    if (stream?.names.has(name) && ![...stream.names].some((n) => this.watched.has(n))) {
      this.close();
      this.connect();
    }
  }

  stop(): void {
    this.stopped = true;
    this.close();
    for (const timer of [this.backoff, this.reopenTimer]) if (timer !== null) this.options.clearTimer(timer);
    this.backoff = this.reopenTimer = null;
    this.poller.stop();
  }

  /**
   * The poller watches exactly the names no stream covers. A stream covers its names once its
   * first record arrived (the server sends every name's record first), so a stream being opened,
   * perhaps to be refused, leaves no gap.
   */
  private assign(): void {
    const covered = this.stream?.delivered ? this.stream.names : new Set<string>();
    const polled = [...this.watched].filter((name) => !covered.has(name));
    for (const name of this.poller.names) if (!polled.includes(name)) this.poller.unwatch(name);
    this.poller.watch(polled);
  }

  /** Pass records on; a final one ends its job's watch before anyone reacts to it. */
  private deliver(records: JobStatus[]): void {
    for (const record of records) {
      if (isFinal(record.status)) {
        this.watched.delete(record.name);
        this.poller.unwatch(record.name);
      }
    }
    this.options.onRecords(records);
  }

  private connect(): void {
    if (this.stopped || this.stream || this.backoff !== null) return;
    const names = [...this.watched].slice(0, MAX_JOBS_PER_CALL);
    if (names.length === 0) return;
    const stream: Stream = { names: new Set(names), controller: new AbortController(), closing: false, delivered: false };
    this.stream = stream;
    this.openedAt = this.options.now();
    void this.read(stream).then((ending) => this.ended(stream, ending));
  }

  private close(): void {
    const stream = this.stream;
    if (!stream) return;
    this.stream = null;
    stream.closing = true;
    stream.controller.abort();
  }

  /** New names join the stream by reopening it, but not more often than STREAM_REOPEN_MS. */
  private reopenSoon(): void {
    if (this.reopenTimer !== null) return;
    const reopen = () => {
      this.reopenTimer = null;
      // The new names may have ended meanwhile (polled), leaving the stream as good as a new one.
      const streamed = this.stream?.names;
      if (streamed && [...this.watched].every((name) => streamed.has(name))) return;
      this.close();
      this.connect();
      this.assign();
    };
    const wait = this.openedAt + STREAM_REOPEN_MS - this.options.now();
    if (wait <= 0) reopen();
    else this.reopenTimer = this.options.setTimer(reopen, wait);
  }

  /** Read one stream to its end; every record goes out as it arrives. */
  private async read(stream: Stream): Promise<Ending> {
    const { signal } = stream.controller;
    const { setTimer, clearTimer } = this.options;
    let silence: unknown = null;
    const listen = () => {
      if (silence !== null) clearTimer(silence);
      silence = setTimer(() => stream.controller.abort(), STREAM_SILENCE_MS);
    };
    let finished = false;
    const parser = new SseParser({
      onEvent: (event) => {
        if (event.type === 'status') this.received(stream, event.data);
        else if (event.type === 'end') finished = true;
      },
      onRetry: (ms) => {
        this.retryMs = ms;
      },
    });
    listen();
    const stopped = (): Ending => (stream.closing ? 'closed' : 'broken');
    try {
      const body = await this.options.openStream([...stream.names], signal);
      if (body === null) return 'absent';
      const reader = body.getReader();
      // Closing the stream ends a read in progress, whoever made the body.
      const cancel = () => void reader.cancel().catch(() => {});
      signal.addEventListener('abort', cancel, { once: true });
      if (signal.aborted) cancel();
      const decoder = new TextDecoder();
      try {
        while (!finished) {
          const { done, value } = await reader.read();
          if (done || signal.aborted) break;
          listen();
          parser.push(decoder.decode(value, { stream: true }));
        }
      } finally {
        // After `end`, or a record that would not parse, the connection is let go at once.
        signal.removeEventListener('abort', cancel);
        cancel();
      }
      if (signal.aborted) return stopped();
      return finished ? 'end' : 'broken';
    } catch {
      return stopped();
    } finally {
      if (silence !== null) clearTimer(silence);
    }
  }

  private received(stream: Stream, data: string): void {
    const record = JSON.parse(data) as JobStatus;
    if (typeof record?.name !== 'string' || typeof record.status !== 'string') {
      throw new Error('an event stream record without name or status');
    }
    this.deliver([record]);
    if (!stream.delivered) {
      stream.delivered = true;
      this.failures = 0;
      if (this.stream === stream) this.assign();
      this.options.onHealthy();
    }
  }

  /**
   * After `end`, the next stream opens at once for whatever is still watched. After anything else
   * every name goes to the poller, and streaming is tried again later: after the server's `retry`,
   * doubled for each failure in a row (a stream that delivered is no failure), or much later
   * where the server has no streams at all.
   */
  private ended(stream: Stream, ending: Ending): void {
    if (this.stream === stream) this.stream = null;
    if (this.stopped || ending === 'closed') return;
    if (this.reopenTimer !== null) this.options.clearTimer(this.reopenTimer);
    this.reopenTimer = null;
    if (ending !== 'end') {
      if (stream.delivered) this.failures = 0;
      const wait =
        ending === 'absent' ? STREAM_ABSENT_RETRY_MS : Math.min(STREAM_BACKOFF_MAX_MS, this.retryMs * 2 ** this.failures);
      this.failures += 1;
      this.backoff = this.options.setTimer(() => {
        this.backoff = null;
        this.connect();
        this.assign();
      }, wait);
    }
    this.connect();
    this.assign();
  }
}
