/** Poll the status of every unfinished job, at most 10 names per call (contract §13.3). */
import { MAX_JOBS_PER_CALL } from './api';
import type { JobStatus, JobStatusName } from './types';

/** States after which a job never changes again, so polling it would be wasted calls. */
const FINAL: ReadonlySet<JobStatusName> = new Set(['success', 'failed', 'cancelled', 'unknown']);

export function isFinal(status: JobStatusName): boolean {
  return FINAL.has(status);
}

/** Split names into consecutive batches of at most `size`, keeping order and dropping duplicates. */
export function batchNames(names: Iterable<string>, size = MAX_JOBS_PER_CALL): string[][] {
  const unique = [...new Set(names)];
  const batches: string[][] = [];
  for (let i = 0; i < unique.length; i += size) batches.push(unique.slice(i, i + size));
  return batches;
}

export interface PollerOptions {
  fetchStatus: (names: string[]) => Promise<JobStatus[]>;
  onRecords: (records: JobStatus[]) => void;
  onError: (error: unknown) => void;
  /** Called after a round in which every call succeeded, so a "connection lost" notice can clear. */
  onHealthy?: () => void;
  interval: number;
  setTimer?: (fn: () => void, ms: number) => unknown;
  clearTimer?: (handle: unknown) => void;
}

/** The optional parts of `PollerOptions` (and of the event feed built on it), as a page runs them. */
export const POLLER_DEFAULTS: Required<Pick<PollerOptions, 'onHealthy' | 'setTimer' | 'clearTimer'>> = {
  onHealthy: () => {},
  setTimer: (fn, ms) => setTimeout(fn, ms),
  clearTimer: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

/**
 * One round per interval: every watched name, in batches, one call after another (the server
 * sees at most one status call from this page at a time). A name leaves the watch list when
 * its record reaches a final state; `watch` of a new name starts a round soon, so a fresh card
 * does not wait a whole interval for its first update.
 */
export class StatusPoller {
  private readonly watched = new Set<string>();
  private readonly options: Required<PollerOptions>;
  private timer: unknown = null;
  private running = false;
  private again = false;
  private stopped = false;

  constructor(options: PollerOptions) {
    this.options = { ...POLLER_DEFAULTS, ...options };
  }

  get names(): string[] {
    return [...this.watched];
  }

  /** Start watching names; schedules a quick first round when any is new. */
  watch(names: Iterable<string>): void {
    let added = false;
    for (const name of names) {
      if (!this.watched.has(name)) {
        this.watched.add(name);
        added = true;
      }
    }
    if (added) this.schedule(Math.min(this.options.interval, 250));
  }

  /** Stop watching a name; with none left, the next round is called off. */
  unwatch(name: string): void {
    this.watched.delete(name);
    if (this.watched.size === 0 && this.timer !== null) {
      this.options.clearTimer(this.timer);
      this.timer = null;
    }
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) this.options.clearTimer(this.timer);
    this.timer = null;
  }

  /** Run one round now: every watched name, in batches of at most ten. */
  async poll(): Promise<void> {
    if (this.stopped) return;
    if (this.running) {
      // A round asked for mid-round (a new card) runs right after this one.
      this.again = true;
      return;
    }
    this.running = true;
    let healthy = true;
    try {
      for (const batch of batchNames(this.watched)) {
        try {
          const records = await this.options.fetchStatus(batch);
          for (const record of records) if (isFinal(record.status)) this.watched.delete(record.name);
          this.options.onRecords(records);
        } catch (error) {
          healthy = false;
          this.options.onError(error);
        }
      }
      if (healthy) this.options.onHealthy();
    } finally {
      this.running = false;
    }
    const quick = this.again;
    this.again = false;
    this.schedule(quick ? 0 : this.options.interval);
  }

  private schedule(ms: number): void {
    if (this.stopped || this.watched.size === 0) return;
    if (this.timer !== null) {
      if (ms >= this.options.interval) return;
      this.options.clearTimer(this.timer);
    }
    this.timer = this.options.setTimer(() => {
      this.timer = null;
      void this.poll();
    }, ms);
  }
}
