/** The history: one card per job, newest first, in as many columns as Settings say. */
import { useEffect, useRef, useState } from 'react';
import type { JobStatus } from '../client/types';
import { useApp } from '../context';
import { labelFor, useI18n } from '../i18n';
import { goToTab } from '../navigation';
import { type HistoryItem, progressFraction } from '../state/history';
import { type ImageSlot, loadImageRef, useImageStore } from '../state/images';
import { applyParams, type JobTab } from '../state/params';
import { useAppStore } from '../state/store';
import { describeError, submitJob } from '../submit';
import { useNotices } from './Notices';

export function HistoryPanel() {
  const { t } = useI18n();
  const history = useAppStore((s) => s.history);
  const columns = useAppStore((s) => s.settings.historyColumns);
  const clear = useAppStore((s) => s.clearHistory);
  return (
    <section className="history" aria-labelledby="history-title" data-testid="history">
      <div className="history-head">
        <h2 id="history-title">{t('history.title')}</h2>
        {history.length > 0 && (
          <button type="button" className="quiet" onClick={clear}>
            {t('history.clear')}
          </button>
        )}
      </div>
      {history.length === 0 ? (
        <p className="empty">{t('history.empty')}</p>
      ) : (
        <ol className="cards" style={{ '--cols': columns } as React.CSSProperties}>
          {history.map((item) => (
            <li key={item.name}>
              <HistoryCard item={item} />
            </li>
          ))}
        </ol>
      )}
    </section>
  );
}

function HistoryCard({ item }: { item: HistoryItem }) {
  const { t } = useI18n();
  const status = item.status.status;
  return (
    <article className={`card status-${status}`} data-testid="job-card" data-status={status} data-name={item.name} aria-label={t('card.label', { tab: t(`tab.${item.tab}`), status: t(`status.${status}`) })}>
      <header className="card-head">
        <span className="badge">{t(`tab.${item.tab}`)}{item.route === 'job' ? ` · ${t('card.grid')}` : ''}</span>
        <time dateTime={new Date(item.submittedAt).toISOString()}>{new Date(item.submittedAt).toLocaleTimeString()}</time>
      </header>
      {status === 'success' ? (
        <ImageCard item={item} />
      ) : status === 'pending' || status === 'running' ? (
        <ProgressCard item={item} />
      ) : (
        <ErrorCard item={item} />
      )}
    </article>
  );
}

function counter(t: ReturnType<typeof useI18n>['t'], key: string, p: { current: number; total: number }) {
  return p.total > 0 ? t(key, { current: Math.min(p.current + (key === 'card.steps' ? 0 : 1), p.total), total: p.total }) : null;
}

function ProgressCard({ item }: { item: HistoryItem }) {
  const { client } = useApp();
  const { t } = useI18n();
  const notify = useNotices((s) => s.push);
  const setStatus = useAppStore((s) => s.setStatus);
  const applyStatus = useAppStore((s) => s.applyStatus);
  const [cancelling, setCancelling] = useState(false);
  const s = item.status;
  const fraction = progressFraction(s);

  const cancel = async () => {
    setCancelling(true);
    try {
      // The answer is the job's true state: `cancelled` at once when it was pending, still
      // `running` until the worker stops at its next step (polling then sees `cancelled`), or
      // `success` when it finished first.
      const [result] = await client.cancel([item.name]);
      if (result?.status === 'cancelled') setStatus(item.name, { ...s, status: 'cancelled' });
      else if (result?.status !== 'running' && result?.status !== 'pending') applyStatus(await client.status([item.name]));
    } catch (err) {
      notify({ kind: 'error', text: describeError(t, err) });
      setCancelling(false);
    }
  };

  const lines =
    s.status === 'pending'
      ? [s.queue.total > 0 ? t('card.queued', { position: s.queue.current + 1, total: s.queue.total }) : t('card.waiting')]
      : [counter(t, 'card.steps', s.steps), counter(t, 'card.stages', s.stages), counter(t, 'card.tiles', s.tiles)].filter(
          (x): x is string => x !== null,
        );

  return (
    <div className="card-body progress-body">
      <p className="card-state">{cancelling ? t('card.cancelling') : t(`status.${s.status}`)}</p>
      <progress
        max={1}
        value={fraction ?? undefined}
        aria-label={t('card.progress')}
        aria-valuetext={fraction === null ? t(`status.${s.status}`) : `${Math.round(fraction * 100)}%`}
      />
      <ul className="progress-lines" data-testid="progress-text">
        {lines.map((line) => (
          <li key={line}>{line}</li>
        ))}
      </ul>
      <PromptLine item={item} />
      <div className="card-actions">
        <button type="button" onClick={() => void cancel()} disabled={cancelling} data-testid="cancel">
          {t('card.cancel')}
        </button>
      </div>
    </div>
  );
}

function PromptLine({ item }: { item: HistoryItem }) {
  if (!item.params.prompt || item.tab === 'blend') return null;
  return <p className="card-prompt" title={item.params.prompt}>{item.params.prompt}</p>;
}

const COPY_TARGETS: Array<{ tab: JobTab; slot: ImageSlot; key: string }> = [
  { tab: 'img2img', slot: 'source', key: 'tab.img2img' },
  { tab: 'inpaint', slot: 'source', key: 'tab.inpaint' },
  { tab: 'upscale', slot: 'source', key: 'tab.upscale' },
  { tab: 'blend', slot: 'blend0', key: 'card.blend0' },
  { tab: 'blend', slot: 'blend1', key: 'card.blend1' },
];

function ImageCard({ item }: { item: HistoryItem }) {
  const { client, server } = useApp();
  const { t } = useI18n();
  const notify = useNotices((s) => s.push);
  const setImage = useImageStore((s) => s.setImage);
  const removeHistory = useAppStore((s) => s.removeHistory);
  const setTabParams = useAppStore((s) => s.setTabParams);
  const outputs = item.status.outputs ?? [];
  // A grid job's outputs are its cells followed by the grid (blend-grid appends it): show the grid.
  const [index, setIndex] = useState(item.route === 'job' ? Math.max(0, outputs.length - 1) : 0);
  const [open, setOpen] = useState(false);
  const output = outputs[index];
  const thumbnail = item.status.thumbnails?.[index] ?? output;
  const meta = item.status.metadata?.[index];
  const params = (meta?.params ?? {}) as Record<string, unknown>;
  const model = String(meta?.models?.[0]?.name ?? params.model ?? item.params.model);
  const size = meta?.size && meta.size.width > 0 ? meta.size : null;

  const copyTo = async (target: (typeof COPY_TARGETS)[number]) => {
    try {
      const res = await fetch(client.outputUrl(output));
      if (!res.ok) throw new Error(`${res.status} ${res.statusText}`);
      setImage(target.tab, target.slot, await loadImageRef(await res.blob(), output));
      goToTab(target.tab);
      notify({ kind: 'info', text: t('card.copied', { tab: t(target.key) }) });
    } catch (err) {
      notify({ kind: 'error', text: t('card.copyFailed', { message: (err as Error).message }) });
    }
  };

  const loadParams = () => {
    const current = useAppStore.getState().tabParams[item.tab];
    if (current) setTabParams(item.tab, applyParams(item.tab, current, item.params, server));
    goToTab(item.tab);
    notify({ kind: 'info', text: t('card.paramsLoaded', { tab: t(`tab.${item.tab}`) }) });
  };

  if (!output) {
    return (
      <div className="card-body">
        <p>{t('card.noOutputs')}</p>
        <div className="card-actions">
          <button type="button" onClick={() => removeHistory(item.name)}>
            {t('common.delete')}
          </button>
        </div>
      </div>
    );
  }

  const alt = item.params.prompt ? t('card.imageOf', { prompt: item.params.prompt }) : t('card.image');
  return (
    <div className="card-body">
      <button type="button" className="thumb" onClick={() => setOpen(true)} aria-label={t('card.fullSize')}>
        <img src={client.outputUrl(thumbnail)} alt={alt} loading="lazy" data-testid="card-image" />
      </button>
      {outputs.length > 1 && (
        <div className="pager" role="group" aria-label={t('card.pager')}>
          <button type="button" className="icon" aria-label={t('card.previous')} disabled={index === 0} onClick={() => setIndex(index - 1)}>
            ‹
          </button>
          <span>{t('card.page', { index: index + 1, total: outputs.length })}</span>
          <button type="button" className="icon" aria-label={t('card.next')} disabled={index === outputs.length - 1} onClick={() => setIndex(index + 1)}>
            ›
          </button>
        </div>
      )}
      <dl className="card-params">
        {/* Upscale and blend run no diffusion, so its parameters would say nothing true. */}
        {item.tab !== 'upscale' && item.tab !== 'blend' && (
          <>
            <dt>{t('card.model')}</dt>
            <dd>{labelFor(t, 'model', model)}</dd>
            <dt>{t('param.scheduler')}</dt>
            <dd>{labelFor(t, 'scheduler', String(params.scheduler ?? item.params.scheduler))}</dd>
            <dt>{t('param.seed')}</dt>
            <dd>{String(params.seed ?? item.params.seed)}</dd>
            <dt>{t('param.cfg')}</dt>
            <dd>{String(params.cfg ?? item.params.cfg)}</dd>
            <dt>{t('param.steps')}</dt>
            <dd>{String(params.steps ?? item.params.steps)}</dd>
          </>
        )}
        {item.tab === 'upscale' && item.params.upscale.enabled && (
          <>
            <dt>{t('param.upscaling')}</dt>
            <dd>{labelFor(t, 'model', item.params.upscaling)}</dd>
          </>
        )}
        {size && (
          <>
            <dt>{t('card.size')}</dt>
            <dd>
              {size.width} × {size.height}
            </dd>
          </>
        )}
      </dl>
      <PromptLine item={item} />
      <div className="card-actions">
        <a className="button" href={client.outputUrl(output)} download={output} data-testid="download-image">
          {t('card.downloadImage')}
        </a>
        <a className="button" href={client.outputUrl(`${output}.json`)} download={`${output}.json`} data-testid="download-metadata">
          {t('card.downloadMetadata')}
        </a>
        <CopyMenu onPick={(target) => void copyTo(target)} />
        <button type="button" onClick={loadParams}>
          {t('card.loadParams')}
        </button>
        <button type="button" onClick={() => removeHistory(item.name)} data-testid="delete">
          {t('common.delete')}
        </button>
      </div>
      {open && <Lightbox src={client.outputUrl(output)} alt={alt} onClose={() => setOpen(false)} />}
    </div>
  );
}

function CopyMenu({ onPick }: { onPick(target: (typeof COPY_TARGETS)[number]): void }) {
  const { t } = useI18n();
  return (
    <select
      className="copy-menu"
      aria-label={t('card.copyTo')}
      value=""
      data-testid="copy-to"
      onChange={(e) => {
        const target = COPY_TARGETS[Number(e.target.value)];
        if (target) onPick(target);
      }}
    >
      <option value="">{t('card.copyTo')}</option>
      {COPY_TARGETS.map((target, i) => (
        <option key={target.key} value={i}>
          {t(target.key)}
        </option>
      ))}
    </select>
  );
}

/** Full-size view in a modal dialog: Esc and the close button dismiss it, focus returns after. */
function Lightbox({ src, alt, onClose }: { src: string; alt: string; onClose(): void }) {
  const { t } = useI18n();
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const dialog = ref.current;
    if (dialog && !dialog.open) dialog.showModal();
    return () => dialog?.close();
  }, []);
  return (
    <dialog ref={ref} className="lightbox" onClose={onClose} onClick={(e) => e.target === ref.current && onClose()} data-testid="lightbox">
      <img src={src} alt={alt} />
      <div className="lightbox-actions">
        <a className="button" href={src} target="_blank" rel="noreferrer">
          {t('card.openTab')}
        </a>
        <button type="button" className="primary" onClick={onClose} autoFocus>
          {t('common.close')}
        </button>
      </div>
    </dialog>
  );
}

function ErrorCard({ item }: { item: HistoryItem }) {
  const { client } = useApp();
  const { t } = useI18n();
  const notify = useNotices((s) => s.push);
  const removeHistory = useAppStore((s) => s.removeHistory);
  const pushHistory = useAppStore((s) => s.pushHistory);
  const sentFiles = useImageStore((s) => s.sentFiles[item.name]);
  const rememberFiles = useImageStore((s) => s.rememberFiles);
  const [busy, setBusy] = useState(false);
  const s: JobStatus = item.status;
  const needsFiles = item.tab !== 'txt2img';
  const canRetry = !needsFiles || sentFiles !== undefined;

  const retry = async () => {
    setBusy(true);
    try {
      const { item: next, files } = await submitJob(client, item.tab, item.params, sentFiles ?? {});
      removeHistory(item.name);
      pushHistory(next);
      rememberFiles(next.name, files);
    } catch (err) {
      notify({ kind: 'error', text: describeError(t, err) });
    } finally {
      setBusy(false);
    }
  };

  const reason = s.reason ? labelFor(t, 'reason', s.reason) : null;
  return (
    <div className="card-body error-body">
      <p className="card-state" role={s.status === 'failed' ? 'alert' : undefined}>
        {t(`status.${s.status}`)}
      </p>
      {s.status === 'failed' && <p data-testid="failure-reason">{reason ? t('card.reason', { reason }) : t('card.noReason')}</p>}
      {s.status === 'unknown' && <p>{t('card.unknown')}</p>}
      <PromptLine item={item} />
      <div className="card-actions">
        <button type="button" onClick={() => void retry()} disabled={!canRetry || busy} data-testid="retry" title={canRetry ? undefined : t('card.retryNeedsImages')}>
          {t('card.retry')}
        </button>
        <button type="button" onClick={() => removeHistory(item.name)} data-testid="delete">
          {t('common.delete')}
        </button>
      </div>
      {!canRetry && <p className="hint">{t('card.retryNeedsImages')}</p>}
    </div>
  );
}
