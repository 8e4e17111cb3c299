/** Workers (`GET /api/worker/status`): one row per live worker, and the Restart button. */
import { useEffect, useState } from 'react';
import type { WorkerDetail, WorkerStatus } from '../../client/types';
import { useNotices } from '../../components/Notices';
import { useApp } from '../../context';
import { useI18n } from '../../i18n';
import { describeError } from '../../submit';

type Loaded = { state: 'loading' } | { state: 'ok'; value: WorkerStatus } | { state: 'error'; message: string };

export function Workers() {
  const { client } = useApp();
  const { t } = useI18n();
  const notify = useNotices((s) => s.push);
  const [loaded, setLoaded] = useState<Loaded>({ state: 'loading' });
  const [restarting, setRestarting] = useState(false);

  const load = () => {
    setLoaded({ state: 'loading' });
    client.workerStatus().then(
      (value) => setLoaded({ state: 'ok', value }),
      (err: unknown) => setLoaded({ state: 'error', message: describeError(t, err, { admin: true }) }),
    );
  };

  useEffect(() => {
    load();
    // Load once when the tab opens; the Refresh button reloads.
  }, [client]);

  const restart = async () => {
    setRestarting(true);
    try {
      const value = await client.restartWorkers();
      notify({ kind: 'info', text: t('models.restarted') });
      setLoaded({ state: 'ok', value });
    } catch (err) {
      notify({ kind: 'error', text: describeError(t, err, { admin: true }) });
    } finally {
      setRestarting(false);
    }
  };

  return (
    <section className="group workers" data-testid="workers">
      <h3>{t('models.workers')}</h3>
      <div className="button-row">
        <button type="button" onClick={load}>
          {t('common.refresh')}
        </button>
        <button type="button" onClick={() => void restart()} disabled={restarting}>
          {t('models.restart')}
        </button>
      </div>
      {loaded.state === 'loading' && <p aria-busy="true">{t('common.loading')}</p>}
      {loaded.state === 'error' && (
        <p className="form-error" role="alert" data-testid="worker-status-error">
          {loaded.message}
        </p>
      )}
      {loaded.state === 'ok' && <WorkerTable details={loaded.value.details ?? []} />}
    </section>
  );
}

function WorkerTable({ details }: { details: WorkerDetail[] }) {
  const { t } = useI18n();
  if (details.length === 0) return <p className="empty">{t('models.worker.none')}</p>;
  return (
    <div className="table-scroll">
      <table className="worker-table" data-testid="worker-status">
        <thead>
          <tr>
            <th scope="col">{t('models.worker.device')}</th>
            <th scope="col">{t('models.worker.jobs')}</th>
            <th scope="col">{t('models.worker.heartbeat')}</th>
            <th scope="col">{t('models.worker.job')}</th>
            <th scope="col">{t('models.worker.cached')}</th>
          </tr>
        </thead>
        <tbody>
          {details.map((w) => (
            <tr key={w.id} data-testid="worker-row" data-id={w.id}>
              <th scope="row">
                <span>{w.device}</span>
                <small className="hint">
                  {w.platform} · <code title={w.id}>{w.id}</code>
                </small>
              </th>
              <td>{w.jobs}</td>
              <td>{w.heartbeat_age_s === undefined ? '—' : t('models.worker.ago', { seconds: w.heartbeat_age_s.toFixed(1) })}</td>
              <td>
                {w.job ? <code>{w.job}</code> : <span className="hint">{t('models.worker.idle')}</span>}
                {w.loading && (
                  <div className="worker-loading" data-testid="worker-loading">
                    <progress
                      max={w.loading.total > 0 ? w.loading.total : undefined}
                      value={w.loading.total > 0 ? w.loading.current : undefined}
                      aria-label={t('models.worker.loading', { model: w.loading.model })}
                    />
                    <small>
                      {t('models.worker.loadingProgress', { model: w.loading.model, current: w.loading.current, total: w.loading.total })}
                    </small>
                  </div>
                )}
              </td>
              <td>
                {(w.cached_models ?? []).length === 0 ? (
                  <span className="hint">{t('models.none')}</span>
                ) : (
                  <ul className="cached-models">
                    {(w.cached_models ?? []).map((m) => (
                      <li key={m}>
                        <code>{m}</code>
                      </li>
                    ))}
                  </ul>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
