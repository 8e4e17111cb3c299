/** An inline "are you sure?" bar: nothing happens until the user confirms; Cancel has the focus. */
import { useId } from 'react';
import { useI18n } from '../i18n';

interface ConfirmBarProps {
  text: string;
  confirmLabel: string;
  onConfirm(): void;
  onCancel(): void;
  testId?: string;
}

export function ConfirmBar({ text, confirmLabel, onConfirm, onCancel, testId }: ConfirmBarProps) {
  const { t } = useI18n();
  const id = useId();
  return (
    <div className="confirm" role="alertdialog" aria-labelledby={id} data-testid={testId}>
      <span id={id}>{text}</span>
      <div className="button-row">
        <button type="button" className="danger" onClick={onConfirm} data-testid={testId && `${testId}-yes`}>
          {confirmLabel}
        </button>
        <button type="button" onClick={onCancel} autoFocus>
          {t('common.cancel')}
        </button>
      </div>
    </div>
  );
}
