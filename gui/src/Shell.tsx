/** The loaded app: header, tab bar, the current tab, history, and the status feed behind the cards. */
import { type DragEvent, useEffect, useState } from 'react';
import { ApiError } from './client/api';
import { paramsFromFile } from './client/metadata';
import { StatusFeed } from './client/events';
import { HistoryPanel } from './components/HistoryPanel';
import { Notices, useNotices } from './components/Notices';
import { useApp } from './context';
import { useI18n } from './i18n';
import { shownTab, useHashTab, visibleTabs } from './navigation';
import { applyParams, JOB_TABS, type JobTab } from './state/params';
import { unfinishedNames } from './state/history';
import { useAppStore } from './state/store';
import { JobTabView } from './tabs/JobTab';
import { ModelsTab } from './tabs/ModelsTab';
import { JobsTab } from './tabs/JobsTab';
import { SettingsTab } from './tabs/SettingsTab';
import { SettingsLink } from './components/SettingsLink';

interface Health {
  /** The server could not be reached in the last round. */
  offline: boolean;
  /** The server refused the API key (401/403) in the last round: its message. */
  refused: string | null;
  /** The server answered the last round with a 5xx (an outage) or a 429 (a quota): what it said. */
  unavailable: { status: number; message: string } | null;
}

const HEALTHY: Health = { offline: false, refused: null, unavailable: null };

/** A status round's failure as the shell shows it: connection lost, key refused, or server unavailable. */
export function healthOf(error: unknown): Health {
  if (!(error instanceof ApiError) || error.kind !== 'http') return { ...HEALTHY, offline: true };
  if (error.unauthorised) return { ...HEALTHY, refused: error.message };
  if (error.status === 429 || error.status >= 500) return { ...HEALTHY, unavailable: { status: error.status, message: error.message } };
  return HEALTHY;
}

/** How long Settings' API key must stay unchanged before it is tried (not on every keystroke). */
const KEY_CHECK_DELAY_MS = 400;

/**
 * The status feed behind the cards (pushed by the server's event stream, polled where there is
 * none), and whether the server refuses this page's API key: seen by a poll round, and tried at
 * start and after each change of the key where the server lists jobs (the cheapest call that
 * needs a key; its settings answer without one even in keys mode).
 */
function useJobStatus(): Health {
  const { client, runtime, jobsListing } = useApp();
  const apiKey = useAppStore((s) => s.settings.apiKey);
  const [health, setHealth] = useState<Health>(HEALTHY);
  useEffect(() => {
    const feed = new StatusFeed({
      openStream: client.jobEvents,
      fetchStatus: client.status,
      onRecords: (records) => useAppStore.getState().applyStatus(records),
      // Only a failure to reach the server is "connection lost"; an outage's 503 is said apart.
      onError: (error) => setHealth(healthOf(error)),
      onHealthy: () => setHealth(HEALTHY),
      interval: runtime.interval,
    });
    const sync = () => {
      const wanted = unfinishedNames(useAppStore.getState().history);
      for (const name of feed.names) if (!wanted.includes(name)) feed.unwatch(name);
      feed.watch(wanted);
    };
    sync();
    const unsubscribe = useAppStore.subscribe(sync);
    return () => {
      unsubscribe();
      feed.stop();
    };
  }, [client, runtime.interval]);
  useEffect(() => {
    if (!jobsListing) return;
    let live = true;
    const timer = setTimeout(() => {
      client.jobs({ limit: 1 }).then(
        () => live && setHealth((h) => ({ ...h, refused: null })),
        (error: unknown) =>
          live && setHealth((h) => ({ ...h, refused: error instanceof ApiError && error.unauthorised ? error.message : null })),
      );
    }, KEY_CHECK_DELAY_MS);
    return () => {
      live = false;
      clearTimeout(timer);
    };
  }, [client, jobsListing, apiKey]);
  return health;
}

export function Shell() {
  const { server, missing, jobsListing } = useApp();
  const { t, language } = useI18n();
  // Without a jobs listing on the server the Jobs tab does not exist, even by its address.
  const tab = shownTab(useHashTab(), jobsListing);
  const tabs = visibleTabs(jobsListing);
  const { offline, refused, unavailable } = useJobStatus();
  const notify = useNotices((s) => s.push);
  const [motdHidden, setMotdHidden] = useState(false);
  const motd = server.params.motd?.[language] ?? server.params.motd?.en ?? '';

  useEffect(() => {
    // The moment the controls are on screen and usable; the e2e suite reads it back.
    performance.mark('app-interactive');
  }, []);

  useEffect(() => {
    document.title = `${t(`tab.${tab}`)} · onnx-web`;
  }, [tab, t]);

  const isJobTab = (JOB_TABS as readonly string[]).includes(tab);

  /** A file dropped outside an image slot loads its parameters into the current tab. */
  const onDrop = async (e: DragEvent) => {
    const file = e.dataTransfer.files[0];
    if (!file || !isJobTab) return;
    e.preventDefault();
    const patch = await paramsFromFile(file).catch(() => null);
    if (patch === null) {
      notify({ kind: 'error', text: t('profiles.noParams', { file: file.name }) });
      return;
    }
    const state = useAppStore.getState();
    const jobTab = tab as JobTab;
    const current = state.tabParams[jobTab];
    if (current) state.setTabParams(jobTab, applyParams(jobTab, current, patch, server));
    notify({ kind: 'info', text: t('profiles.loadedFrom', { file: file.name }) });
  };

  return (
    <div className="app">
      <a className="skip-link" href="#main">
        {t('a11y.skip')}
      </a>
      <header className="app-header">
        <div className="brand">
          <span className="logo" aria-hidden="true" />
          <span className="brand-name">onnx-web</span>
          <span className="badge version" data-testid="server-version" title={t('header.serverVersion')}>
            {t('header.version', { version: server.params.version })}
          </span>
        </div>
        {offline && (
          <span className="badge warn" role="status" data-testid="offline">
            {t('header.offline')}
          </span>
        )}
        {motd && !motdHidden && (
          <p className="motd" data-testid="motd">
            <span>{motd}</span>
            <button type="button" className="icon" aria-label={t('header.dismiss')} onClick={() => setMotdHidden(true)}>
              ×
            </button>
          </p>
        )}
      </header>
      <nav className="tabs" aria-label={t('a11y.tabs')}>
        {tabs.map((name) => (
          <a
            key={name}
            href={`#${name}`}
            aria-current={name === tab ? 'page' : undefined}
            className={name === tab ? 'active' : undefined}
            data-testid={`tab-${name}`}
          >
            {t(`tab.${name}`)}
          </a>
        ))}
      </nav>
      {refused !== null && (
        <p className="banner warn" role="alert" data-testid="auth-banner">
          {t('auth.refused', { message: refused })} <SettingsLink />
        </p>
      )}
      {unavailable !== null && (
        <p className="banner warn" role="status" data-testid="unavailable-banner">
          {t('header.unavailable', { status: unavailable.status, message: unavailable.message })}
        </p>
      )}
      {missing.length > 0 && (
        <p className="banner warn" role="status">
          {t('boot.missing', { lists: missing.join(', ') })}
        </p>
      )}
      <main
        id="main"
        tabIndex={-1}
        onDragOver={(e) => {
          if (isJobTab && e.dataTransfer.types.includes('Files')) e.preventDefault();
        }}
        onDrop={(e) => void onDrop(e)}
      >
        {isJobTab ? (
          <div className="workspace">
            <section className="controls" aria-label={t(`tab.${tab}`)}>
              <JobTabView key={tab} tab={tab as JobTab} />
            </section>
            <HistoryPanel />
          </div>
        ) : tab === 'jobs' ? (
          <JobsTab />
        ) : tab === 'models' ? (
          <ModelsTab />
        ) : (
          <SettingsTab />
        )}
      </main>
      <Notices />
    </div>
  );
}
