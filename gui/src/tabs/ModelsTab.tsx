/** Models: what the server has; with an admin token, worker status, restart and the extras file. */
import { useEffect, useState } from 'react';
import { useNotices } from '../components/Notices';
import { useApp } from '../context';
import { labelFor, useI18n } from '../i18n';
import { describeError } from '../submit';

type Loaded = { state: 'idle' } | { state: 'loading' } | { state: 'ok'; value: unknown } | { state: 'error'; message: string };

function useAdminCall(load: () => Promise<unknown>, enabled: boolean): [Loaded, () => void] {
  const { t } = useI18n();
  const [result, setResult] = useState<Loaded>({ state: 'idle' });
  const run = () => {
    setResult({ state: 'loading' });
    load().then(
      (value) => setResult({ state: 'ok', value }),
      (err) => setResult({ state: 'error', message: describeError(t, err, { admin: true }) }),
    );
  };
  useEffect(() => {
    if (enabled) run();
    // Load once when the tab opens; the Refresh button reloads.
  }, [enabled]);
  return [result, run];
}

function ShowLoaded({ loaded, testId }: { loaded: Loaded; testId: string }) {
  const { t } = useI18n();
  if (loaded.state === 'loading') return <p aria-busy="true">{t('common.loading')}</p>;
  if (loaded.state === 'error') return <p className="form-error" role="alert" data-testid={`${testId}-error`}>{loaded.message}</p>;
  if (loaded.state === 'ok') {
    return <pre className="json" data-testid={testId}>{typeof loaded.value === 'string' ? loaded.value : JSON.stringify(loaded.value, null, 2)}</pre>;
  }
  return null;
}

function ModelList({ title, names, group }: { title: string; names: string[]; group: string }) {
  const { t } = useI18n();
  return (
    <section className="group model-list">
      <h2>
        {title} <span className="badge">{names.length}</span>
      </h2>
      {names.length === 0 ? (
        <p className="empty">{t('models.none')}</p>
      ) : (
        <ul>
          {names.map((name) => {
            const label = labelFor(t, group, name);
            return (
              <li key={name}>
                <span>{label}</span>
                {label !== name && <code>{name}</code>}
              </li>
            );
          })}
        </ul>
      )}
    </section>
  );
}

export function ModelsTab() {
  const { client, server, runtime } = useApp();
  const { t } = useI18n();
  const notify = useNotices((s) => s.push);
  const admin = runtime.token !== '';
  const [workers, reloadWorkers] = useAdminCall(client.workerStatus, admin);
  const [extras, reloadExtras] = useAdminCall(client.extras, admin);
  const [restarting, setRestarting] = useState(false);
  const { models } = server;

  const restart = async () => {
    setRestarting(true);
    try {
      await client.restartWorkers();
      notify({ kind: 'info', text: t('models.restarted') });
      reloadWorkers();
    } catch (err) {
      notify({ kind: 'error', text: describeError(t, err, { admin: true }) });
    } finally {
      setRestarting(false);
    }
  };

  return (
    <div className="page models" data-testid="models">
      <h1>{t('tab.models')}</h1>
      <div className="page-grid">
        <ModelList title={t('models.diffusion')} names={models.diffusion} group="model" />
        <ModelList title={t('models.upscaling')} names={models.upscaling} group="model" />
        <ModelList title={t('models.correction')} names={models.correction} group="model" />
        <section className="group model-list">
          <h2>
            {t('models.networks')} <span className="badge">{models.networks.length}</span>
          </h2>
          {models.networks.length === 0 ? (
            <p className="empty">{t('models.none')}</p>
          ) : (
            <ul>
              {models.networks.map((n) => (
                <li key={`${n.type}:${n.name}`}>
                  <span>{n.name}</span>
                  <span className="badge">{t(`models.networkType.${n.type}`)}</span>
                  {n.tokens.length > 0 && <code>{n.tokens.join(', ')}</code>}
                </li>
              ))}
            </ul>
          )}
        </section>
        <ModelList title={t('models.platforms')} names={server.platforms} group="platform" />
        <ModelList title={t('models.schedulers')} names={server.schedulers} group="scheduler" />
      </div>

      <h2>{t('models.admin')}</h2>
      {admin ? (
        <div className="page-grid">
          <section className="group">
            <h3>{t('models.workers')}</h3>
            <div className="button-row">
              <button type="button" onClick={reloadWorkers}>
                {t('common.refresh')}
              </button>
              <button type="button" onClick={() => void restart()} disabled={restarting}>
                {t('models.restart')}
              </button>
            </div>
            <ShowLoaded loaded={workers} testId="worker-status" />
          </section>
          <section className="group">
            <h3>{t('models.extras')}</h3>
            <div className="button-row">
              <button type="button" onClick={reloadExtras}>
                {t('common.refresh')}
              </button>
            </div>
            <ShowLoaded loaded={extras} testId="extras" />
          </section>
        </div>
      ) : (
        <p className="hint">{t('models.needToken')}</p>
      )}
    </div>
  );
}
