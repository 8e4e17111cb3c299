/** The loaded app: header, tab bar, the current tab, history, and the status poller behind the cards. */
import { type DragEvent, useEffect, useState } from 'react';
import { ApiError } from './client/api';
import { paramsFromFile } from './client/metadata';
import { StatusPoller } from './client/poller';
import { HistoryPanel } from './components/HistoryPanel';
import { Notices, useNotices } from './components/Notices';
import { useApp } from './context';
import { useI18n } from './i18n';
import { useHashTab } from './navigation';
import { applyParams, JOB_TABS, type JobTab, TABS } from './state/params';
import { unfinishedNames } from './state/history';
import { useAppStore } from './state/store';
import { JobTabView } from './tabs/JobTab';
import { ModelsTab } from './tabs/ModelsTab';
import { SettingsTab } from './tabs/SettingsTab';

function usePolling(): boolean {
  const { client, runtime } = useApp();
  const [offline, setOffline] = useState(false);
  useEffect(() => {
    const poller = new StatusPoller({
      fetchStatus: client.status,
      onRecords: (records) => useAppStore.getState().applyStatus(records),
      // Only a failure to reach the server is "connection lost"; an HTTP error answer is not.
      onError: (error) => setOffline(!(error instanceof ApiError && error.kind === 'http')),
      onHealthy: () => setOffline(false),
      interval: runtime.interval,
    });
    const sync = () => {
      const wanted = unfinishedNames(useAppStore.getState().history);
      for (const name of poller.names) if (!wanted.includes(name)) poller.unwatch(name);
      poller.watch(wanted);
    };
    sync();
    const unsubscribe = useAppStore.subscribe(sync);
    return () => {
      unsubscribe();
      poller.stop();
    };
  }, [client, runtime.interval]);
  return offline;
}

export function Shell() {
  const { server, missing } = useApp();
  const { t, language } = useI18n();
  const tab = useHashTab();
  const offline = usePolling();
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
        {TABS.map((name) => (
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
