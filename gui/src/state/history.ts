/** The job history: pure functions over the list of cards, newest first. */
import type { JobRoute, JobStatus } from '../client/types';
import type { JobTab, TabParams } from './params';

export interface HistoryItem {
  /** The job name the server gave; the key of the card. */
  name: string;
  tab: JobTab;
  route: JobRoute;
  submittedAt: number;
  status: JobStatus;
  /** The parameters it was submitted with, for retry, "load parameters" and the card's caption. */
  params: TabParams;
}

export const HISTORY_SIZE = { min: 2, max: 40, default: 20 } as const;
export const HISTORY_COLUMNS = { min: 1, max: 6, default: 3 } as const;

/** Put a new job first, replacing an older card of the same name, and keep at most `limit` cards. */
export function addHistory(history: HistoryItem[], item: HistoryItem, limit: number): HistoryItem[] {
  return [item, ...history.filter((h) => h.name !== item.name)].slice(0, Math.max(1, limit));
}

/**
 * Apply status records to the cards they name. A record never moves a card backwards out of a
 * final state (a late answer from a round that started before a cancel must not revive it).
 */
export function applyStatus(history: HistoryItem[], records: JobStatus[]): HistoryItem[] {
  if (records.length === 0) return history;
  const byName = new Map(records.map((r) => [r.name, r]));
  let changed = false;
  const next = history.map((item) => {
    const record = byName.get(item.name);
    if (record === undefined || isSettled(item.status) || sameRecord(item.status, record)) return item;
    changed = true;
    return { ...item, status: record };
  });
  return changed ? next : history;
}

export function removeHistory(history: HistoryItem[], name: string): HistoryItem[] {
  return history.filter((h) => h.name !== name);
}

/** Final states: nothing the server says later changes the card. */
export function isSettled(status: JobStatus): boolean {
  return status.status === 'success' || status.status === 'failed' || status.status === 'cancelled';
}

export function unfinishedNames(history: HistoryItem[]): string[] {
  return history.filter((h) => h.status.status === 'pending' || h.status.status === 'running').map((h) => h.name);
}

function sameRecord(a: JobStatus, b: JobStatus): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** The seed an output was really made with (its metadata), when the server recorded one. */
export function outputSeed(item: HistoryItem, index: number): number | null {
  const seed = item.status.metadata?.[index]?.params?.seed;
  const value = typeof seed === 'string' && seed.trim() !== '' ? Number(seed) : seed;
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 ? value : null;
}

/**
 * The parameters that make an output again: what the job was sent with, but with the seed it
 * actually used, so a job sent with seed -1 (random) reproduces rather than rolls a new one.
 */
export function reuseParams(item: HistoryItem, index: number): TabParams {
  const seed = outputSeed(item, index);
  return seed === null ? item.params : { ...item.params, seed };
}

/** Progress as a fraction in [0, 1], or null when the total is not known yet (contract §6.4). */
export function progressFraction(status: JobStatus): number | null {
  const { current, total } = status.steps;
  if (status.status === 'success') return 1;
  if (!total || total <= 0) return null;
  // Tiled stages can count past the total; a running job is never shown as done.
  return Math.min(0.99, Math.max(0, current / total));
}
