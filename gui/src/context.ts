/** What every component may need once the server has answered: the client, its settings, the config. */
import { createContext, useContext } from 'react';
import type { ApiClient } from './client/api';
import type { RuntimeConfig } from './config';
import type { ServerInfo } from './state/params';

export interface AppContextValue {
  client: ApiClient;
  server: ServerInfo;
  runtime: RuntimeConfig;
  /** Settings lists the server failed to send; the controls built from them are empty. */
  missing: string[];
  /** Whether the server lists the caller's jobs (`GET /api/jobs`); the Jobs tab is hidden otherwise. */
  jobsListing: boolean;
}

export const AppContext = createContext<AppContextValue | null>(null);

export function useApp(): AppContextValue {
  const value = useContext(AppContext);
  if (value === null) throw new Error('useApp outside the loaded app');
  return value;
}
