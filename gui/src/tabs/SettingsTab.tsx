/** Settings: history, defaults, appearance, language, server, state export and reset. */
import { type FormEvent, useId, useRef, useState } from 'react';
import { CheckField, NumberField, SelectField, TextField } from '../components/fields';
import { useNotices } from '../components/Notices';
import { downloadJson } from '../components/ProfilesRow';
import { useApp } from '../context';
import { labelFor, LANGUAGES, useI18n } from '../i18n';
import { HISTORY_COLUMNS, HISTORY_SIZE } from '../state/history';
import { defaultTabParams, JOB_TABS, type JobTab } from '../state/params';
import { API_KEY_FIELD_ID } from '../components/SettingsLink';
import { exportableSettings, type ThemeChoice, useAppStore } from '../state/store';

const LANGUAGE_NAMES: Record<string, string> = { en: 'English', de: 'Deutsch' };

export function SettingsTab() {
  const { server, runtime } = useApp();
  const { t, language } = useI18n();
  const settings = useAppStore((s) => s.settings);
  const update = useAppStore((s) => s.updateSettings);
  const setTabParams = useAppStore((s) => s.setTabParams);
  const replaceState = useAppStore((s) => s.replaceState);
  const notify = useNotices((s) => s.push);
  const [serverUrl, setServerUrl] = useState(runtime.root);
  const [confirmAll, setConfirmAll] = useState(false);
  const [showKey, setShowKey] = useState(false);
  const importRef = useRef<HTMLInputElement>(null);
  const serverId = useId();

  const reset = (tabs: readonly JobTab[]) => {
    const user = { prompt: settings.defaultPrompt, scheduler: settings.defaultScheduler };
    for (const tab of tabs) setTabParams(tab, defaultTabParams(tab, server, user));
    notify({ kind: 'info', text: t('settings.resetDone', { tabs: tabs.map((x) => t(`tab.${x}`)).join(', ') }) });
  };

  const connect = (e: FormEvent) => {
    e.preventDefault();
    const url = new URL(window.location.href);
    url.searchParams.set('api', serverUrl.trim());
    window.location.assign(url.toString());
  };

  const exportState = () => {
    const { settings: s, tabParams, history, profiles } = useAppStore.getState();
    downloadJson('state.json', { settings: exportableSettings(s), tabParams, history, profiles });
  };

  const importState = async (file: File | undefined) => {
    if (!file) return;
    try {
      const parsed = JSON.parse(await file.text()) as Record<string, unknown>;
      if (typeof parsed !== 'object' || parsed === null) throw new Error('not an object');
      replaceState({
        // The key in use stays: a state file is not where a secret should come from.
        ...(typeof parsed.settings === 'object' ? { settings: { ...settings, ...(parsed.settings as object), apiKey: settings.apiKey } } : {}),
        ...(Array.isArray(parsed.history) ? { history: parsed.history } : {}),
        ...(Array.isArray(parsed.profiles) ? { profiles: parsed.profiles } : {}),
      });
      notify({ kind: 'info', text: t('settings.imported', { file: file.name }) });
    } catch (err) {
      notify({ kind: 'error', text: t('settings.importFailed', { message: (err as Error).message }) });
    }
  };

  return (
    <div className="page settings" data-testid="settings">
      <h1>{t('tab.settings')}</h1>
      <div className="page-grid">
        <fieldset className="group">
          <legend>{t('settings.history')}</legend>
          <NumberField
            label={t('settings.historySize')}
            value={settings.historySize}
            spec={{ ...HISTORY_SIZE, step: 1 }}
            onChange={(historySize) => update({ historySize })}
          />
          <NumberField
            label={t('settings.historyColumns')}
            value={settings.historyColumns}
            spec={{ ...HISTORY_COLUMNS, step: 1 }}
            onChange={(historyColumns) => update({ historyColumns })}
          />
        </fieldset>

        <fieldset className="group">
          <legend>{t('settings.appearance')}</legend>
          <SelectField
            label={t('settings.language')}
            value={settings.language || language}
            options={LANGUAGES.map((l) => ({ value: l, label: LANGUAGE_NAMES[l] ?? l }))}
            onChange={(value) => update({ language: value })}
            testId="language"
          />
          <SelectField
            label={t('settings.theme')}
            value={settings.theme}
            options={(['system', 'light', 'dark'] as const).map((x) => ({ value: x, label: t(`settings.themes.${x}`) }))}
            onChange={(theme) => update({ theme: theme as ThemeChoice })}
            testId="theme"
          />
          <CheckField
            label={t('settings.followBrowser')}
            checked={settings.language === ''}
            onChange={(follow) => update({ language: follow ? '' : language })}
          />
        </fieldset>

        <fieldset className="group">
          <legend>{t('settings.defaults')}</legend>
          <TextField
            label={t('settings.defaultPrompt')}
            value={settings.defaultPrompt}
            onChange={(defaultPrompt) => update({ defaultPrompt })}
            multiline
            rows={2}
          />
          <SelectField
            label={t('settings.defaultScheduler')}
            value={settings.defaultScheduler}
            options={[
              { value: '', label: t('settings.serverDefault') },
              ...server.schedulers.map((s) => ({ value: s, label: labelFor(t, 'scheduler', s) })),
            ]}
            onChange={(defaultScheduler) => update({ defaultScheduler })}
          />
          <p className="hint">{t('settings.defaultsHint')}</p>
        </fieldset>

        <fieldset className="group">
          <legend>{t('settings.serverTitle')}</legend>
          <form onSubmit={connect} className="field">
            <label htmlFor={serverId}>{t('settings.server')}</label>
            <div className="inline">
              <input id={serverId} type="url" value={serverUrl} onChange={(e) => setServerUrl(e.target.value)} />
              <button type="submit">{t('settings.connect')}</button>
            </div>
          </form>
          <div className="field">
            <label htmlFor={API_KEY_FIELD_ID}>{t('settings.apiKey')}</label>
            <div className="inline">
              <input
                id={API_KEY_FIELD_ID}
                type={showKey ? 'text' : 'password'}
                value={settings.apiKey}
                autoComplete="off"
                spellCheck={false}
                aria-describedby={`${API_KEY_FIELD_ID}-hint`}
                onChange={(e) => update({ apiKey: e.target.value.trim() })}
                data-testid="api-key"
              />
              <button type="button" onClick={() => setShowKey(!showKey)} aria-pressed={showKey}>
                {showKey ? t('settings.hideKey') : t('settings.showKey')}
              </button>
            </div>
            <small id={`${API_KEY_FIELD_ID}-hint`} className="hint">
              {t('settings.apiKeyHint')}
            </small>
          </div>
          <dl className="facts">
            <dt>{t('settings.serverVersion')}</dt>
            <dd data-testid="settings-version">{server.params.version}</dd>
            <dt>{t('settings.pollInterval')}</dt>
            <dd>{t('settings.milliseconds', { value: runtime.interval })}</dd>
          </dl>
        </fieldset>

        <fieldset className="group">
          <legend>{t('settings.state')}</legend>
          <div className="button-row">
            <button type="button" onClick={exportState}>
              {t('settings.exportState')}
            </button>
            <button type="button" onClick={() => importRef.current?.click()}>
              {t('settings.importState')}
            </button>
            <input
              ref={importRef}
              type="file"
              accept="application/json,.json"
              className="visually-hidden"
              tabIndex={-1}
              aria-label={t('settings.importState')}
              onChange={(e) => {
                void importState(e.target.files?.[0]);
                e.target.value = '';
              }}
            />
          </div>
        </fieldset>

        <fieldset className="group">
          <legend>{t('settings.reset')}</legend>
          <div className="button-row">
            {JOB_TABS.map((tab) => (
              <button key={tab} type="button" onClick={() => reset([tab])}>
                {t('settings.resetTab', { tab: t(`tab.${tab}`) })}
              </button>
            ))}
          </div>
          {confirmAll ? (
            <div className="button-row" role="group" aria-label={t('settings.resetAll')}>
              <span>{t('settings.resetAllConfirm')}</span>
              <button
                type="button"
                className="danger"
                onClick={() => {
                  reset(JOB_TABS);
                  replaceState({ history: [], profiles: [] });
                  setConfirmAll(false);
                }}
              >
                {t('settings.resetAll')}
              </button>
              <button type="button" onClick={() => setConfirmAll(false)}>
                {t('common.cancel')}
              </button>
            </div>
          ) : (
            <button type="button" className="danger" onClick={() => setConfirmAll(true)}>
              {t('settings.resetAll')}
            </button>
          )}
        </fieldset>
      </div>
    </div>
  );
}
