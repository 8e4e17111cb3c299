/**
 * The model store (`GET /api/models`): conversions with their stage and progress, polled while
 * any is unfinished, and the stored models, each deletable.
 */
import { useCallback, useEffect, useRef, useState } from 'react';
import type { ApiClient } from '../../client/api';
import type { Conversion, ModelStoreListing, StoredModel } from '../../client/types';
import { ConfirmBar } from '../../components/ConfirmBar';
import { useNotices } from '../../components/Notices';
import { useApp } from '../../context';
import { formatBytes, labelFor, type Translate, useI18n } from '../../i18n';
import { describeError } from '../../submit';

/** How often the listing is asked for while a conversion is pending or running. */
export const CONVERSION_POLL_MS = 2000;


const isActive = (c: Conversion) => c.state === 'pending' || c.state === 'running';

/** The progress of a conversion's stage: bytes while downloading or publishing, steps converting. */
function progressText(t: Translate, c: Conversion): string {
  if (c.stage === null) return t(`models.conversionState.${c.state}`);
  // A stage this GUI does not know is shown by its own name.
  const stage = labelFor(t, 'models.stage', c.stage);
  const { current, total } = c.progress;
  if (c.stage === 'convert') return t('models.conversions.steps', { stage, current, total });
  return t('models.conversions.bytes', { stage, current: formatBytes(current), total: total > 0 ? formatBytes(total) : '?' });
}

export interface ModelStore {
  listing: ModelStoreListing | null;
  error: string | null;
  reload(): void;
}

/**
 * The listing, loaded when enabled and again every `CONVERSION_POLL_MS` while a conversion is
 * pending or running; polling stops when none is, and on unmount.
 */
export function useModelStore(client: ApiClient, enabled: boolean): ModelStore {
  const { t } = useI18n();
  const [listing, setListing] = useState<ModelStoreListing | null>(null);
  const [error, setError] = useState<string | null>(null);
  // Bumped after every answer, so a failed poll still schedules the next one.
  const [round, setRound] = useState(0);
  const alive = useRef(true);

  const reload = useCallback(() => {
    client.modelStore().then(
      (value) => {
        if (!alive.current) return;
        setListing(value);
        setError(null);
        setRound((r) => r + 1);
      },
      (err: unknown) => {
        if (!alive.current) return;
        setError(describeError(t, err, { admin: true }));
        setRound((r) => r + 1);
      },
    );
  }, [client, t]);

  useEffect(() => {
    alive.current = true;
    if (enabled) reload();
    return () => {
      alive.current = false;
    };
  }, [enabled, reload]);

  const active = listing?.conversions.some(isActive) ?? false;
  useEffect(() => {
    if (!enabled || !active) return;
    const timer = setTimeout(reload, CONVERSION_POLL_MS);
    return () => clearTimeout(timer);
  }, [enabled, active, round, reload]);

  return { listing, error, reload };
}

export function ConversionList({ store }: { store: ModelStore }) {
  const { client } = useApp();
  const { t } = useI18n();
  const notify = useNotices((s) => s.push);
  const [cancelling, setCancelling] = useState<string | null>(null);
  const conversions = store.listing?.conversions ?? [];

  const cancel = async (c: Conversion) => {
    setCancelling(c.job);
    try {
      await client.cancel([c.job]);
      notify({ kind: 'info', text: t('models.conversions.cancelled', { name: c.name }) });
    } catch (err) {
      notify({ kind: 'error', text: describeError(t, err) });
    } finally {
      setCancelling(null);
      store.reload();
    }
  };

  return (
    <section className="group" data-testid="conversions">
      <h3>{t('models.conversions.title')}</h3>
      <StoreState store={store} />
      {store.listing && conversions.length === 0 && <p className="empty">{t('models.conversions.none')}</p>}
      <ol className="store-rows">
        {conversions.map((c) => (
          <li key={c.job} className="store-row" data-testid="conversion" data-name={c.name} data-job={c.job} data-state={c.state}>
            <div className="store-row-head">
              <code title={c.job}>{c.name}</code>
              <span className="badge">{labelFor(t, 'models', c.section)}</span>
              <span className={`badge status-badge status-${c.state}`}>{t(`models.conversionState.${c.state}`)}</span>
            </div>
            {isActive(c) && (
              <>
                <progress
                  max={c.progress.total > 0 ? c.progress.total : undefined}
                  value={c.progress.total > 0 ? c.progress.current : undefined}
                  aria-label={t('models.conversions.progress', { name: c.name })}
                />
                <p className="progress-lines" data-testid="conversion-progress">
                  {progressText(t, c)}
                </p>
                <button type="button" onClick={() => void cancel(c)} disabled={cancelling === c.job} data-testid="conversion-cancel">
                  {t('models.conversions.cancel')}
                </button>
              </>
            )}
            {c.reason && <p className="failure-message">{t('card.reason', { reason: c.reason })}</p>}
          </li>
        ))}
      </ol>
    </section>
  );
}

function StoreState({ store }: { store: ModelStore }) {
  const { t } = useI18n();
  if (store.error) {
    return (
      <p className="form-error" role="alert" data-testid="store-error">
        {store.error}
      </p>
    );
  }
  if (!store.listing) return <p aria-busy="true">{t('common.loading')}</p>;
  return null;
}

export function StoredModels({ store }: { store: ModelStore }) {
  const { t } = useI18n();
  const models = store.listing?.models ?? [];
  return (
    <section className="group" data-testid="stored-models">
      <h3>
        {t('models.store.title')} {store.listing && <span className="badge">{models.length}</span>}
      </h3>
      <div className="button-row">
        <button type="button" onClick={store.reload} data-testid="store-refresh">
          {t('common.refresh')}
        </button>
      </div>
      <StoreState store={store} />
      {store.listing && models.length === 0 && <p className="empty">{t('models.none')}</p>}
      <ul className="store-rows">
        {models.map((model) => (
          <li key={model.name}>
            <StoredModelRow model={model} onDeleted={store.reload} />
          </li>
        ))}
      </ul>
    </section>
  );
}

function StoredModelRow({ model, onDeleted }: { model: StoredModel; onDeleted(): void }) {
  const { client } = useApp();
  const { t, language } = useI18n();
  const notify = useNotices((s) => s.push);
  const [confirming, setConfirming] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const label = model.labels[language] ?? model.labels.en;

  const remove = async () => {
    setConfirming(false);
    setBusy(true);
    setError(null);
    try {
      const answer = await client.deleteModel(model.name);
      notify({ kind: 'info', text: t('models.store.deleted', { name: answer.name, versions: answer.versions }) });
      onDeleted();
    } catch (err) {
      setError(describeError(t, err, { admin: true }));
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="store-row" data-testid="stored-model" data-name={model.name} data-state={model.state}>
      <div className="store-row-head">
        <code>{model.name}</code>
        {label && label !== model.name && <span>{label}</span>}
        <span className={`badge model-state-${model.state}`}>{t(`models.store.state.${model.state}`)}</span>
      </div>
      <p className="store-facts">
        <span>{model.family ? `${model.kind} · ${model.family}` : model.kind}</span>
        <span>{formatBytes(model.size_bytes)}</span>
        <code title={model.content_hash}>{model.content_hash.slice(0, 12)}</code>
      </p>
      {confirming ? (
        <ConfirmBar
          text={t('models.store.deleteConfirm', { name: model.name })}
          confirmLabel={t('common.delete')}
          onConfirm={() => void remove()}
          onCancel={() => setConfirming(false)}
          testId="delete-confirm"
        />
      ) : (
        <button
          type="button"
          className="danger"
          onClick={() => setConfirming(true)}
          disabled={busy || model.state === 'deleting'}
          aria-label={t('models.store.deleteNamed', { name: model.name })}
          data-testid="delete-model"
        >
          {t('common.delete')}
        </button>
      )}
      {error && (
        <p className="form-error" role="alert" data-testid="delete-error">
          {error}
        </p>
      )}
    </div>
  );
}
