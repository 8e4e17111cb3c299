/** Jobs: the caller's jobs as the server lists them (`GET /api/jobs`), newest first, a page at a time. */
import { useEffect, useMemo, useRef, useState } from 'react';
import { ApiError } from '../client/api';
import { StatusFeed } from '../client/events';
import { isFinal } from '../client/poller';
import { JOB_FILTERS, type JobFilter, type JobStatus } from '../client/types';
import { SelectField } from '../components/fields';
import { FailureLines, failureText, progressLines } from '../components/JobText';
import { Lightbox, type ViewerImage } from '../components/Lightbox';
import { useOutputSrc } from '../components/outputs';
import { SettingsLink } from '../components/SettingsLink';
import { useApp } from '../context';
import { type Translate, useI18n } from '../i18n';
import { progressFraction } from '../state/history';
import { describeError } from '../submit';

/** Jobs asked for per page. */
export const JOBS_PAGE_SIZE = 20;

/** Add a further page below the rows already shown, skipping any job listed twice. */
export function appendPage(rows: JobStatus[], page: JobStatus[]): JobStatus[] {
  const known = new Set(rows.map((r) => r.name));
  return [...rows, ...page.filter((r) => !known.has(r.name))];
}

/** Replace rows by the fresher status records of the same jobs. */
export function applyRecords(rows: JobStatus[], records: JobStatus[]): JobStatus[] {
  const byName = new Map(records.map((r) => [r.name, r]));
  return rows.map((row) => byName.get(row.name) ?? row);
}

interface Gallery {
  keys: Array<{ name: string; index: number }>;
  images: ViewerImage[];
}

function gallery(rows: JobStatus[], t: Translate): Gallery {
  const keys: Gallery['keys'] = [];
  const images: ViewerImage[] = [];
  for (const row of rows) {
    if (row.status !== 'success') continue;
    (row.outputs ?? []).forEach((output, index) => {
      keys.push({ name: row.name, index });
      const prompt = promptOf(row, index);
      images.push({
        output,
        alt: prompt ? t('card.imageOf', { prompt }) : t('card.image'),
        caption: prompt || row.name,
      });
    });
  }
  return { keys, images };
}

function promptOf(row: JobStatus, index = 0): string {
  const prompt = row.metadata?.[index]?.params?.prompt;
  return typeof prompt === 'string' ? prompt : '';
}

export function JobsTab() {
  const { client, runtime } = useApp();
  const { t } = useI18n();
  const [filter, setFilter] = useState<JobFilter>('');
  const [rows, setRows] = useState<JobStatus[]>([]);
  const [next, setNext] = useState<string | null>(null);
  const [busy, setBusy] = useState(true);
  const [absent, setAbsent] = useState(false);
  const [error, setError] = useState<{ text: string; unauthorised: boolean } | null>(null);
  const [viewing, setViewing] = useState<{ name: string; index: number } | null>(null);
  // Each first-page load supersedes the ones before it; a late answer to an older one is dropped.
  const generation = useRef(0);
  const feed = useRef<StatusFeed | null>(null);

  const load = async (cursor: string | null) => {
    const id = cursor === null ? ++generation.current : generation.current;
    setBusy(true);
    setError(null);
    try {
      const page = await client.jobs({ status: filter || undefined, limit: JOBS_PAGE_SIZE, cursor });
      if (id !== generation.current) return;
      if (page === null) {
        setAbsent(true);
        return;
      }
      setRows((old) => (cursor === null ? page.jobs : appendPage(old, page.jobs)));
      setNext(page.next);
    } catch (err) {
      if (id === generation.current) setError({ text: describeError(t, err), unauthorised: err instanceof ApiError && err.unauthorised });
    } finally {
      if (id === generation.current) setBusy(false);
    }
  };

  useEffect(() => {
    void load(null);
    // Reload the first page when the filter changes; "More" and "Refresh" call load themselves.
  }, [filter, client]);

  // Rows still pending or running follow their job, as the history cards do.
  useEffect(() => {
    const p = new StatusFeed({
      openStream: client.jobEvents,
      fetchStatus: client.status,
      onRecords: (records) => setRows((old) => applyRecords(old, records)),
      onError: () => {},
      interval: runtime.interval,
    });
    feed.current = p;
    return () => p.stop();
  }, [client, runtime.interval]);

  useEffect(() => {
    const p = feed.current;
    if (!p) return;
    const wanted = rows.filter((r) => !isFinal(r.status)).map((r) => r.name);
    for (const name of p.names) if (!wanted.includes(name)) p.unwatch(name);
    p.watch(wanted);
  }, [rows]);

  const images = useMemo(() => gallery(rows, t), [rows, t]);
  const position = viewing ? images.keys.findIndex((k) => k.name === viewing.name && k.index === viewing.index) : -1;

  if (absent) {
    return (
      <div className="page jobs" data-testid="jobs">
        <h1>{t('tab.jobs')}</h1>
        <p className="empty">{t('jobs.absent')}</p>
      </div>
    );
  }

  return (
    <div className="page jobs" data-testid="jobs">
      <h1>{t('tab.jobs')}</h1>
      <div className="jobs-toolbar">
        <SelectField
          label={t('jobs.filter')}
          value={filter}
          options={JOB_FILTERS.map((f) => ({ value: f, label: f === '' ? t('jobs.all') : t(`status.${f}`) }))}
          onChange={(value) => setFilter(value as JobFilter)}
          testId="jobs-filter"
        />
        <button type="button" onClick={() => void load(null)} disabled={busy} data-testid="jobs-refresh">
          {t('common.refresh')}
        </button>
      </div>
      {error && (
        <p className="form-error" role="alert" data-testid="jobs-error">
          {error.text}
          {error.unauthorised && (
            <>
              {' '}
              <SettingsLink />
            </>
          )}
        </p>
      )}
      {rows.length === 0 && !busy && !error && <p className="empty">{t(filter ? 'jobs.noneWithStatus' : 'jobs.empty', { status: filter ? t(`status.${filter}`) : '' })}</p>}
      <ol className="job-rows" aria-busy={busy}>
        {rows.map((row) => (
          <li key={row.name}>
            <JobRow row={row} onView={(index) => setViewing({ name: row.name, index })} />
          </li>
        ))}
      </ol>
      {busy && <p aria-busy="true">{t('common.loading')}</p>}
      {next !== null && !busy && (
        <button type="button" className="more" onClick={() => void load(next)} data-testid="jobs-more">
          {t('jobs.more')}
        </button>
      )}
      {position >= 0 && (
        <Lightbox
          images={images.images}
          index={position}
          onIndex={(i) => setViewing(images.keys[i])}
          onClose={() => setViewing(null)}
        />
      )}
    </div>
  );
}

function JobRow({ row, onView }: { row: JobStatus; onView(index: number): void }) {
  const { client } = useApp();
  const { t } = useI18n();
  const outputs = row.status === 'success' ? (row.outputs ?? []) : [];
  const thumbnail = useOutputSrc(row.thumbnails?.[0] ?? outputs[0]);
  const fraction = progressFraction(row);
  const unfinished = row.status === 'pending' || row.status === 'running';
  const prompt = promptOf(row);
  return (
    <article className={`job-row status-${row.status}`} data-testid="job-row" data-name={row.name} data-status={row.status}>
      {thumbnail ? (
        <button type="button" className="thumb" onClick={() => onView(0)} aria-label={t('card.fullSize')}>
          <img src={thumbnail} alt={prompt ? t('card.imageOf', { prompt }) : t('card.image')} loading="lazy" />
        </button>
      ) : (
        <span className="thumb placeholder" aria-hidden="true" />
      )}
      <div className="job-row-body">
        <div className="job-row-head">
          <code className="job-name" title={row.name}>
            {row.name}
          </code>
          <span className={`badge status-badge status-${row.status}`}>{t(`status.${row.status}`)}</span>
        </div>
        {prompt && (
          <p className="card-prompt" title={prompt}>
            {prompt}
          </p>
        )}
        {unfinished && (
          <>
            <progress
              max={1}
              value={fraction ?? undefined}
              aria-label={t('card.progress')}
              aria-valuetext={fraction === null ? t(`status.${row.status}`) : `${Math.floor(fraction * 100)}%`}
            />
            <p className="progress-lines" data-testid="progress-text">
              {progressLines(t, row).join(' · ')}
            </p>
          </>
        )}
        {row.status === 'failed' && <FailureLines failure={failureText(t, row)} />}
        {outputs.length > 0 && (
          <p className="job-outputs">
            {outputs.map((output, i) => (
              <a
                key={output}
                href={client.outputUrl(output)}
                onClick={(e) => {
                  // In the page's viewer, which also fetches with the API key where one is set.
                  e.preventDefault();
                  onView(i);
                }}
                data-testid="job-output"
              >
                {t('jobs.output', { index: i + 1 })}
              </a>
            ))}
          </p>
        )}
      </div>
    </article>
  );
}
