/** Light or dark: the OS decides unless the user picked one in Settings. */
import { useEffect } from 'react';
import type { ThemeChoice } from './state/store';

export function useTheme(choice: ThemeChoice): void {
  useEffect(() => {
    const root = document.documentElement;
    if (choice === 'system') root.removeAttribute('data-theme');
    else root.setAttribute('data-theme', choice);
  }, [choice]);
}
