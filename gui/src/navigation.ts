/** The tab lives in the URL hash: the api serves only real files, so a path per tab would 404 on reload. */
import { useEffect, useState } from 'react';
import { isTab, type Tab, TABS } from './state/params';

function readTab(): Tab {
  const hash = window.location.hash.replace(/^#\/?/, '');
  return isTab(hash) ? hash : 'txt2img';
}

export function useHashTab(): Tab {
  const [tab, setTab] = useState<Tab>(readTab);
  useEffect(() => {
    const onHash = () => setTab(readTab());
    window.addEventListener('hashchange', onHash);
    return () => window.removeEventListener('hashchange', onHash);
  }, []);
  return tab;
}

export function goToTab(tab: Tab): void {
  window.location.hash = tab;
}

/** The tabs this server supports: Jobs only where it lists jobs (`GET /api/jobs`). */
export function visibleTabs(jobsListing: boolean): Tab[] {
  return TABS.filter((tab) => tab !== 'jobs' || jobsListing);
}

/** The tab to show for the address: one the server does not support falls back to the first. */
export function shownTab(tab: Tab, jobsListing: boolean): Tab {
  return visibleTabs(jobsListing).includes(tab) ? tab : 'txt2img';
}
