/** What a job's status record says in words: its progress and, when it failed, why. */
import type { JobStatus, Progress } from '../client/types';
import { labelFor, type Translate } from '../i18n';
import { progressFraction } from '../state/history';

/** "Stage 2 of 3": `current` counts finished units, so the one under way is current + 1. */
function counter(t: Translate, key: string, p: Progress): string | null {
  return p.total > 0 ? t(key, { current: Math.min(p.current + 1, p.total), total: p.total }) : null;
}

/**
 * The progress lines of an unfinished job. `steps.total` counts every unit of work, the saving
 * of the outputs included, so a job asked for 5 steps reports 6: it is shown as a percentage,
 * never as "step x of 6", which would contradict the steps the user asked for.
 */
export function progressLines(t: Translate, s: JobStatus): string[] {
  if (s.status === 'pending') {
    const place = s.queue.total > 0 ? t('card.queued', { position: s.queue.current + 1, total: s.queue.total }) : t('card.waiting');
    return s.retry ? [retryLine(t, s.retry), place] : [place];
  }
  const fraction = progressFraction(s);
  return [
    fraction === null ? null : t('card.percent', { percent: Math.floor(fraction * 100) }),
    counter(t, 'card.stages', s.stages),
    counter(t, 'card.tiles', s.tiles),
  ].filter((x): x is string => x !== null);
}

/** "Attempt 2 of 3 after a failure, from 12:00:05": a job back in the queue waits out a backoff. */
function retryLine(t: Translate, retry: NonNullable<JobStatus['retry']>): string {
  const values = { attempt: retry.attempt, max: retry.maxAttempts, reason: retry.reason ? labelFor(t, 'reason', retry.reason) : '' };
  const because = retry.reason ? 'Because' : '';
  const after = retry.after ? new Date(retry.after) : null;
  if (!after || Number.isNaN(after.getTime()) || after.getTime() <= Date.now()) return t(`card.retrying${because}`, values);
  return t(`card.retrying${because}From`, { ...values, time: after.toLocaleTimeString() });
}

export interface FailureText {
  /** "Reason: out of memory", or a line saying the server gave none. */
  reason: string;
  /** What the user can do about a known reason, when there is advice to give. */
  hint: string | null;
  /** The server's own message about this failure, shown as sent. */
  message: string | null;
}

/** Why a job failed, in plain words: known reason codes translated, unknown ones verbatim. */
export function failureText(t: Translate, s: JobStatus): FailureText {
  const reason = s.reason ? labelFor(t, 'reason', s.reason) : null;
  const hint = s.reason ? labelFor(t, 'reasonHint', s.reason) : '';
  return {
    reason: reason ? t('card.reason', { reason }) : t('card.noReason'),
    hint: s.reason && hint !== s.reason ? hint : null,
    message: typeof s.error === 'string' && s.error.trim() !== '' ? s.error.trim() : null,
  };
}

/** A failed job's reason, the advice for it and the server's message, as the card and the Jobs view show them. */
export function FailureLines({ failure }: { failure: FailureText }) {
  return (
    <>
      <p data-testid="failure-reason">{failure.reason}</p>
      {failure.message && (
        <p className="failure-message" data-testid="failure-message">
          {failure.message}
        </p>
      )}
      {failure.hint && <p className="hint">{failure.hint}</p>}
    </>
  );
}
