/** The way from "the server refused the API key" to the field where the key is set. */
import { useI18n } from '../i18n';
import { goToTab } from '../navigation';

/** The id of the API key input in Settings. */
export const API_KEY_FIELD_ID = 'api-key';

/** Open Settings and put the cursor in the API key field once the tab has rendered. */
export function focusApiKey(): void {
  goToTab('settings');
  let tries = 0;
  const tick = () => {
    const field = document.getElementById(API_KEY_FIELD_ID);
    if (field) {
      field.focus();
      field.scrollIntoView?.({ block: 'center' });
    } else if (tries++ < 20) {
      setTimeout(tick, 50);
    }
  };
  setTimeout(tick, 0);
}

export function SettingsLink() {
  const { t } = useI18n();
  return (
    <a
      href="#settings"
      className="settings-link"
      onClick={(e) => {
        e.preventDefault();
        focusApiKey();
      }}
      data-testid="api-key-link"
    >
      {t('auth.openSettings')}
    </a>
  );
}
