/** Named parameter sets: save, load, delete, export; and parameters from a file (PNG, JPEG, JSON, text). */
import { type FormEvent, useId, useRef, useState } from 'react';
import { paramsFromFile } from '../client/metadata';
import { useApp } from '../context';
import { useI18n } from '../i18n';
import { BUILTIN_PREFIX, BUILTIN_PROFILES, builtinProfile } from '../state/builtinProfiles';
import { applyParams, type JobTab, type TabParams } from '../state/params';
import { useAppStore } from '../state/store';
import { useNotices } from './Notices';
import { saveBlob } from './outputs';

/** Save a JSON document as a file. */
export function downloadJson(name: string, value: unknown): void {
  saveBlob(name, new Blob([JSON.stringify(value, null, 2)], { type: 'application/json' }));
}

export function ProfilesRow({ tab, p, set }: { tab: JobTab; p: TabParams; set(next: TabParams): void }) {
  const { server } = useApp();
  const { t } = useI18n();
  const profiles = useAppStore((s) => s.profiles);
  const saveProfile = useAppStore((s) => s.saveProfile);
  const deleteProfile = useAppStore((s) => s.deleteProfile);
  const notify = useNotices((s) => s.push);
  const [selected, setSelected] = useState('');
  const [naming, setNaming] = useState(false);
  const [name, setName] = useState('');
  const fileRef = useRef<HTMLInputElement>(null);
  const selectId = useId();
  const nameId = useId();

  const load = (value: string) => {
    const builtin = builtinProfile(value);
    const profile = builtin ? undefined : profiles.find((x) => x.name === value);
    const params = builtin?.params ?? profile?.params;
    if (!params) return;
    set(applyParams(tab, p, params, server));
    const name = builtin ? t(`profiles.builtin.${builtin.id}`) : value;
    notify({ kind: 'info', text: t('profiles.loaded', { name }) });
  };

  const save = (e: FormEvent) => {
    e.preventDefault();
    const trimmed = name.trim();
    if (!trimmed) return;
    const { grid: _grid, ...params } = p;
    saveProfile({ name: trimmed, savedAt: Date.now(), params });
    setSelected(trimmed);
    setNaming(false);
    setName('');
    notify({ kind: 'info', text: t('profiles.saved', { name: trimmed }) });
  };

  const importFile = async (file: File | undefined) => {
    if (!file) return;
    const patch = await paramsFromFile(file).catch(() => null);
    if (patch === null) {
      notify({ kind: 'error', text: t('profiles.noParams', { file: file.name }) });
      return;
    }
    set(applyParams(tab, p, patch, server));
    notify({ kind: 'info', text: t('profiles.loadedFrom', { file: file.name }) });
  };

  return (
    <div className="profiles" data-testid="profiles">
      <div className="field">
        <label htmlFor={selectId}>{t('profiles.title')}</label>
        <div className="inline">
          <select id={selectId} value={selected} onChange={(e) => setSelected(e.target.value)}>
            <option value="">{t('profiles.choose')}</option>
            <optgroup label={t('profiles.builtinGroup')}>
              {BUILTIN_PROFILES.map((x) => (
                <option key={x.id} value={`${BUILTIN_PREFIX}${x.id}`}>
                  {t(`profiles.builtin.${x.id}`)}
                </option>
              ))}
            </optgroup>
            <optgroup label={profiles.length ? t('profiles.savedGroup') : t('profiles.none')}>
              {profiles.map((x) => (
                <option key={x.name} value={x.name}>
                  {x.name}
                </option>
              ))}
            </optgroup>
          </select>
          <button type="button" disabled={!selected} onClick={() => load(selected)}>
            {t('profiles.load')}
          </button>
          <button
            type="button"
            disabled={!selected || builtinProfile(selected) !== undefined}
            onClick={() => {
              deleteProfile(selected);
              setSelected('');
            }}
          >
            {t('common.delete')}
          </button>
        </div>
      </div>
      <div className="button-row">
        {naming ? (
          <form className="inline" onSubmit={save}>
            <label htmlFor={nameId} className="visually-hidden">
              {t('profiles.name')}
            </label>
            <input id={nameId} value={name} onChange={(e) => setName(e.target.value)} placeholder={t('profiles.name')} autoFocus />
            <button type="submit" className="primary" disabled={!name.trim()}>
              {t('common.save')}
            </button>
            <button type="button" onClick={() => setNaming(false)}>
              {t('common.cancel')}
            </button>
          </form>
        ) : (
          <button type="button" onClick={() => setNaming(true)}>
            {t('profiles.save')}
          </button>
        )}
        <button type="button" onClick={() => downloadJson(`${tab}-parameters.json`, { params: p })}>
          {t('profiles.export')}
        </button>
        <button type="button" onClick={() => fileRef.current?.click()} title={t('profiles.importHint')}>
          {t('profiles.import')}
        </button>
        <input
          ref={fileRef}
          type="file"
          accept="image/png,image/jpeg,image/webp,application/json,.json,.txt"
          className="visually-hidden"
          tabIndex={-1}
          aria-label={t('profiles.import')}
          data-testid="profile-import"
          onChange={(e) => {
            void importFile(e.target.files?.[0]);
            e.target.value = '';
          }}
        />
      </div>
    </div>
  );
}
