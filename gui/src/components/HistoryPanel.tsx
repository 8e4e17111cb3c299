/** The history: one card per job, newest first, in as many columns as Settings say. */
import { type CSSProperties, useMemo, useState } from 'react';
import type { JobStatus } from '../client/types';
import { useApp } from '../context';
import { labelFor, type Translate, useI18n } from '../i18n';
import { goToTab } from '../navigation';
import { type HistoryItem, progressFraction, reuseParams } from '../state/history';
import { type ImageSlot, loadImageRef, uploadProblem, useImageStore } from '../state/images';
import { applyParams, type JobTab } from '../state/params';
import { useAppStore } from '../state/store';
import { describeError, submitJob } from '../submit';
import { uploadProblemText } from './ImageInput';
import { FailureLines, failureText, progressLines } from './JobText';
import { Lightbox, type ViewerImage } from './Lightbox';
import { useNotices } from './Notices';
import { outputFileName, useOutputDownload, useOutputSrc, usePreviewSrc } from './outputs';

/** Which output the viewer shows: by job name and output index, so new cards do not move it. */
interface ViewerKey {
  name: string;
  index: number;
}

/** Every finished image in the history, newest job first: what the viewer steps through. */
export function historyGallery(history: HistoryItem[], t: Translate): Array<ViewerKey & { image: ViewerImage }> {
  return history
    .filter((item) => item.status.status === 'success')
    .flatMap((item) =>
      (item.status.outputs ?? []).map((output, index) => ({
        name: item.name,
        index,
        image: {
          output,
          alt: imageAlt(t, item),
          caption: item.params.prompt && item.tab !== 'blend' ? item.params.prompt : t(`tab.${item.tab}`),
        },
      })),
    );
}

function imageAlt(t: Translate, item: HistoryItem): string {
  return item.params.prompt ? t('card.imageOf', { prompt: item.params.prompt }) : t('card.image');
}

export function HistoryPanel() {
  const { t } = useI18n();
  const history = useAppStore((s) => s.history);
  const columns = useAppStore((s) => s.settings.historyColumns);
  const clear = useAppStore((s) => s.clearHistory);
  const [confirming, setConfirming] = useState(false);
  const [viewing, setViewing] = useState<ViewerKey | null>(null);
  const gallery = useMemo(() => historyGallery(history, t), [history, t]);
  const position = viewing ? gallery.findIndex((g) => g.name === viewing.name && g.index === viewing.index) : -1;

  return (
    <section className="history" aria-labelledby="history-title" data-testid="history">
      <div className="history-head">
        <h2 id="history-title">{t('history.title')}</h2>
        {history.length > 0 && !confirming && (
          <button type="button" className="quiet" onClick={() => setConfirming(true)} data-testid="clear-history">
            {t('history.clear')}
          </button>
        )}
      </div>
      {confirming && history.length > 0 && (
        <div className="confirm" role="alertdialog" aria-labelledby="clear-confirm-text" data-testid="clear-confirm">
          <span id="clear-confirm-text">{t('history.clearConfirm', { count: history.length })}</span>
          <div className="button-row">
            <button
              type="button"
              className="danger"
              onClick={() => {
                clear();
                setConfirming(false);
              }}
              data-testid="clear-history-confirm"
            >
              {t('history.clearYes')}
            </button>
            <button type="button" onClick={() => setConfirming(false)} autoFocus>
              {t('common.cancel')}
            </button>
          </div>
        </div>
      )}
      {history.length === 0 ? (
        <p className="empty">{t('history.empty')}</p>
      ) : (
        <ol className="cards" style={{ '--cols': columns } as CSSProperties}>
          {history.map((item) => (
            <li key={item.name}>
              <HistoryCard item={item} onView={(index) => setViewing({ name: item.name, index })} />
            </li>
          ))}
        </ol>
      )}
      {position >= 0 && (
        <Lightbox
          images={gallery.map((g) => g.image)}
          index={position}
          onIndex={(i) => setViewing({ name: gallery[i].name, index: gallery[i].index })}
          onClose={() => setViewing(null)}
        />
      )}
    </section>
  );
}

function HistoryCard({ item, onView }: { item: HistoryItem; onView(index: number): void }) {
  const { t } = useI18n();
  const status = item.status.status;
  return (
    <article className={`card status-${status}`} data-testid="job-card" data-status={status} data-name={item.name} aria-label={t('card.label', { tab: t(`tab.${item.tab}`), status: t(`status.${status}`) })}>
      <header className="card-head">
        <span className="badge">{t(`tab.${item.tab}`)}{item.route === 'job' ? ` · ${t('card.grid')}` : ''}</span>
        <time dateTime={new Date(item.submittedAt).toISOString()}>{new Date(item.submittedAt).toLocaleTimeString()}</time>
      </header>
      {status === 'success' ? (
        <ImageCard item={item} onView={onView} />
      ) : status === 'pending' || status === 'running' ? (
        <ProgressCard item={item} />
      ) : (
        <ErrorCard item={item} />
      )}
    </article>
  );
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

  const lines = progressLines(t, s);
  const preview = usePreviewSrc(s.status === 'running' ? s.preview?.url : undefined);

  return (
    <div className="card-body progress-body">
      {preview && s.preview && (
        <img className="card-preview" src={preview} alt={t('card.preview', { step: s.preview.step })} data-testid="card-preview" />
      )}
      <p className="card-state">{cancelling ? t('card.cancelling') : t(`status.${s.status}`)}</p>
      <progress
        max={1}
        value={fraction ?? undefined}
        aria-label={t('card.progress')}
        aria-valuetext={fraction === null ? t(`status.${s.status}`) : `${Math.floor(fraction * 100)}%`}
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

function ImageCard({ item, onView }: { item: HistoryItem; onView(index: number): void }) {
  const { client, server } = useApp();
  const { t, language } = useI18n();
  const notify = useNotices((s) => s.push);
  const setImage = useImageStore((s) => s.setImage);
  const removeHistory = useAppStore((s) => s.removeHistory);
  const setTabParams = useAppStore((s) => s.setTabParams);
  const outputs = item.status.outputs ?? [];
  // A grid job's outputs are its cells followed by the grid (blend-grid appends it): show the grid.
  const [index, setIndex] = useState(item.route === 'job' ? Math.max(0, outputs.length - 1) : 0);
  const output = outputs[index];
  const thumbnail = useOutputSrc(item.status.thumbnails?.[index] ?? output);
  const download = useOutputDownload();
  const meta = item.status.metadata?.[index];
  const params = (meta?.params ?? {}) as Record<string, unknown>;
  const model = String(meta?.models?.[0]?.name ?? params.model ?? item.params.model);
  const size = meta?.size && meta.size.width > 0 ? meta.size : null;

  const copyTo = async (target: (typeof COPY_TARGETS)[number]) => {
    try {
      const blob = await client.outputBlob(output);
      const image = await loadImageRef(blob, output);
      // An upscaled output may be more than the server takes back as an upload.
      const problem = uploadProblem({ bytes: blob.size, width: image.width, height: image.height }, server.limits);
      if (problem) {
        URL.revokeObjectURL(image.url);
        notify({ kind: 'error', text: uploadProblemText(t, language, outputFileName(output), problem) });
        return;
      }
      setImage(target.tab, target.slot, image);
      goToTab(target.tab);
      notify({ kind: 'info', text: t('card.copied', { tab: t(target.key) }) });
    } catch (err) {
      notify({ kind: 'error', text: t('card.copyFailed', { message: (err as Error).message }) });
    }
  };

  const loadParams = () => {
    const current = useAppStore.getState().tabParams[item.tab];
    // The output's own seed, not the -1 it may have been sent with, so the image comes out again.
    if (current) setTabParams(item.tab, applyParams(item.tab, current, reuseParams(item, index), server));
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

  const alt = imageAlt(t, item);
  return (
    <div className="card-body">
      <button type="button" className="thumb" onClick={() => onView(index)} aria-label={t('card.fullSize')}>
        <img src={thumbnail} alt={alt} loading="lazy" data-testid="card-image" />
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
        <a className="button" href={client.outputUrl(output)} download={outputFileName(output)} onClick={download(output)} data-testid="download-image">
          {t('card.downloadImage')}
        </a>
        <a
          className="button"
          href={client.outputUrl(`${output}.json`)}
          download={`${outputFileName(output)}.json`}
          onClick={download(`${output}.json`)}
          data-testid="download-metadata"
        >
          {t('card.downloadMetadata')}
        </a>
        <CopyMenu onPick={(target) => void copyTo(target)} />
        <button type="button" onClick={loadParams} data-testid="load-params">
          {t('card.loadParams')}
        </button>
        <button type="button" onClick={() => removeHistory(item.name)} data-testid="delete">
          {t('common.delete')}
        </button>
      </div>
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

  const failure = failureText(t, s);
  return (
    <div className="card-body error-body">
      <p className="card-state" role={s.status === 'failed' ? 'alert' : undefined}>
        {t(`status.${s.status}`)}
      </p>
      {s.status === 'failed' && <FailureLines failure={failure} />}
      {s.status !== 'failed' && failure.message && <p className="failure-message" data-testid="failure-message">{failure.message}</p>}
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
