/** Short-lived messages ("parameters loaded", "copied to img2img"), announced to screen readers. */
import { create } from 'zustand';
import { useI18n } from '../i18n';

export interface Notice {
  id: number;
  kind: 'info' | 'error';
  text: string;
}

const NOTICE_MS = 5000;

interface NoticeStore {
  notices: Notice[];
  push(notice: Omit<Notice, 'id'>): void;
  dismiss(id: number): void;
}

let nextId = 1;

export const useNotices = create<NoticeStore>()((set, get) => ({
  notices: [],
  push: (notice) => {
    const id = nextId++;
    set((s) => ({ notices: [...s.notices.slice(-3), { ...notice, id }] }));
    setTimeout(() => get().dismiss(id), NOTICE_MS);
  },
  dismiss: (id) => set((s) => ({ notices: s.notices.filter((n) => n.id !== id) })),
}));

export function Notices() {
  const { t } = useI18n();
  const notices = useNotices((s) => s.notices);
  const dismiss = useNotices((s) => s.dismiss);
  return (
    <div className="notices" aria-live="polite" data-testid="notices">
      {notices.map((n) => (
        <div key={n.id} className={`notice ${n.kind}`} role={n.kind === 'error' ? 'alert' : 'status'}>
          <span>{n.text}</span>
          <button type="button" className="icon" aria-label={t('header.dismiss')} onClick={() => dismiss(n.id)}>
            ×
          </button>
        </div>
      ))}
    </div>
  );
}
