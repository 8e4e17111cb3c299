/** The app: boot against the server, then the shell with its tabs, or a screen saying why not. */
import { type FormEvent, type ReactNode, useCallback, useEffect, useMemo, useState } from 'react';
import { type BootResult, connect } from './boot';
import { createClient } from './client/api';
import { type ClientConfig, keepAdminToken, loadClientConfig, MIN_SERVER_VERSION, resolveRuntimeConfig, type RuntimeConfig } from './config';
import { AppContext } from './context';
import { chooseLanguage, createTranslator, I18nContext, type Language, useI18n } from './i18n';
import { Shell } from './Shell';
import { applyParams, defaultTabParams, JOB_TABS } from './state/params';
import { useAppStore } from './state/store';
import { useTheme } from './theme';

type Phase = { kind: 'loading' } | BootResult;

export function App() {
  const [config, setConfig] = useState<ClientConfig | null>(null);
  const [phase, setPhase] = useState<Phase>({ kind: 'loading' });
  const [attempt, setAttempt] = useState(0);
  const settings = useAppStore((s) => s.settings);
  const updateSettings = useAppStore((s) => s.updateSettings);
  useTheme(settings.theme);

  const runtime: RuntimeConfig | null = useMemo(() => {
    if (!config) return null;
    const resolved = resolveRuntimeConfig(config, window.location);
    return { ...resolved, token: keepAdminToken(resolved.token, window, resolved.root) };
  }, [config]);
  // The key is read at each call, so changing it in Settings needs no new client (and no reload).
  const client = useMemo(
    () => (runtime ? createClient({ root: runtime.root, token: runtime.token, apiKey: () => useAppStore.getState().settings.apiKey }) : null),
    [runtime],
  );

  useEffect(() => {
    void loadClientConfig().then(setConfig);
  }, []);

  useEffect(() => {
    if (!client) return;
    let live = true;
    setPhase({ kind: 'loading' });
    void connect(client).then((result) => {
      if (!live) return;
      if (result.kind === 'ready') seedTabParams(result.server);
      setPhase(result);
    });
    return () => {
      live = false;
    };
  }, [client, attempt]);

  const language = chooseLanguage(runtime?.lng ?? '', settings.language, navigator.languages ?? [navigator.language]);
  const strings = phase.kind === 'ready' ? phase.server.strings : {};
  const t = useMemo(() => createTranslator(language, strings), [language, strings]);
  const setLanguage = useCallback((lng: Language) => updateSettings({ language: lng }), [updateSettings]);
  const i18n = useMemo(() => ({ language, t, setLanguage }), [language, t, setLanguage]);

  useEffect(() => {
    document.documentElement.lang = language;
  }, [language]);

  const retry = () => setAttempt((a) => a + 1);

  let body;
  if (phase.kind === 'loading' || !runtime || !client) {
    body = (
      <main className="screen" aria-busy="true">
        <div className="spinner" aria-hidden="true" />
        <p>{t('boot.loading', { root: runtime?.root ?? '' })}</p>
      </main>
    );
  } else if (phase.kind === 'unreachable') {
    body = (
      <ErrorScreen title={t('boot.unreachable.title')} onRetry={retry} root={runtime.root}>
        <p>{t('boot.unreachable.body', { root: runtime.root })}</p>
        <pre className="error-detail">{phase.message}</pre>
      </ErrorScreen>
    );
  } else if (phase.kind === 'unauthorised') {
    body = (
      <ErrorScreen title={t('auth.title')} onRetry={retry} root={runtime.root}>
        <p>{t('auth.body', { root: runtime.root })}</p>
        <pre className="error-detail" data-testid="auth-error">{phase.message}</pre>
        <ApiKeyForm onSaved={retry} />
      </ErrorScreen>
    );
  } else if (phase.kind === 'too-old') {
    body = (
      <ErrorScreen title={t('boot.tooOld.title')} onRetry={retry} root={runtime.root}>
        <p>{t('boot.tooOld.body', { version: phase.version, min: MIN_SERVER_VERSION, root: runtime.root })}</p>
      </ErrorScreen>
    );
  } else {
    body = (
      <AppContext.Provider value={{ client, server: phase.server, runtime, missing: phase.missing, jobsListing: phase.jobsListing }}>
        <Shell />
      </AppContext.Provider>
    );
  }
  return <I18nContext.Provider value={i18n}>{body}</I18nContext.Provider>;
}

/** The API key, asked for where the server refused to start without one. */
function ApiKeyForm({ onSaved }: { onSaved(): void }) {
  const { t } = useI18n();
  const stored = useAppStore((s) => s.settings.apiKey);
  const updateSettings = useAppStore((s) => s.updateSettings);
  const [key, setKey] = useState(stored);
  const save = (e: FormEvent) => {
    e.preventDefault();
    updateSettings({ apiKey: key.trim() });
    onSaved();
  };
  return (
    <form className="connect-form" onSubmit={save}>
      <label htmlFor="boot-api-key">{t('settings.apiKey')}</label>
      <div className="inline">
        <input id="boot-api-key" type="password" autoComplete="off" value={key} onChange={(e) => setKey(e.target.value)} data-testid="boot-api-key" />
        <button type="submit" className="primary">
          {t('auth.save')}
        </button>
      </div>
      <small className="hint">{t('settings.apiKeyHint')}</small>
    </form>
  );
}

/** Each tab's parameters: the stored ones checked against this server, else the server's defaults. */
function seedTabParams(server: Parameters<typeof defaultTabParams>[1]) {
  const { settings, tabParams, setTabParams } = useAppStore.getState();
  const user = { prompt: settings.defaultPrompt, scheduler: settings.defaultScheduler };
  for (const tab of JOB_TABS) {
    const defaults = defaultTabParams(tab, server, user);
    setTabParams(tab, applyParams(tab, defaults, tabParams[tab], server));
  }
}

function ErrorScreen({
  title,
  children,
  onRetry,
  root,
}: {
  title: string;
  children: ReactNode;
  onRetry(): void;
  root: string;
}) {
  const { t } = useI18n();
  const [server, setServer] = useState(root);
  const connectTo = (e: FormEvent) => {
    e.preventDefault();
    const url = new URL(window.location.href);
    url.searchParams.set('api', server);
    window.location.assign(url.toString());
  };
  return (
    <main className="screen error-screen" role="alert" data-testid="error-screen">
      <h1>{title}</h1>
      {children}
      <div className="screen-actions">
        <button type="button" className="primary" onClick={onRetry} autoFocus>
          {t('boot.retry')}
        </button>
      </div>
      <form className="connect-form" onSubmit={connectTo}>
        <label htmlFor="server-url">{t('settings.server')}</label>
        <div className="inline">
          <input id="server-url" type="url" value={server} onChange={(e) => setServer(e.target.value)} />
          <button type="submit">{t('settings.connect')}</button>
        </div>
      </form>
    </main>
  );
}
