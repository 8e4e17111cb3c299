/**
 * Models: what the server has; with an admin token, the model manager: the extras editor,
 * conversions and the model store, and the workers.
 */
import { useApp } from '../context';
import { labelFor, useI18n } from '../i18n';
import { ExtrasEditor } from './models/ExtrasEditor';
import { ConversionList, StoredModels, useModelStore } from './models/ModelStore';
import { Workers } from './models/Workers';

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
  const admin = runtime.token !== '';
  const store = useModelStore(client, admin);
  const { models } = server;

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
        <>
          <section className="group">
            <h3>{t('models.extras.title')}</h3>
            <ExtrasEditor onSaved={store.reload} />
          </section>
          <div className="page-grid">
            <ConversionList store={store} />
            <StoredModels store={store} />
            <Workers />
          </div>
        </>
      ) : (
        <p className="hint">{t('models.needToken')}</p>
      )}
    </div>
  );
}
