/**
 * The extras editor: each list of the catalogue as forms (or the whole document as text), checked
 * here, then saved with `PUT /api/extras`, whose field errors land next to their fields.
 */
import { type ReactNode, useEffect, useId, useMemo, useState } from 'react';
import { ApiError } from '../../client/api';
import {
  EXTRAS_SECTIONS,
  type ExtrasConflicted,
  type ExtrasDocument,
  type ExtrasEntry,
  type ExtrasRejected,
  type ExtrasSaved,
  type ExtrasSection,
} from '../../client/types';
import { ConfirmBar } from '../../components/ConfirmBar';
import { Section, useOpenWhen } from '../../components/fields';
import { useNotices } from '../../components/Notices';
import { useApp } from '../../context';
import { type Translate, useI18n } from '../../i18n';
import {
  addEntry,
  checkExtras,
  entriesOf,
  entryName,
  type FieldSpec,
  fieldsOf,
  type Issue,
  listText,
  parseExtras,
  parseFieldPath,
  parseList,
  removeEntry,
  replaceEntry,
  sameJson,
  withField,
} from '../../state/extras';
import { describeError } from '../../submit';

type Loaded = { state: 'loading' } | { state: 'error'; message: string } | { state: 'ok'; missing: string | null };

/** Why the last save did not store the document: the server's words, and its field errors. */
interface Refusal {
  message: string;
  issues: Issue[];
}

const serialise = (doc: ExtrasDocument) => JSON.stringify(doc, null, 2);

/** Problems the forms cannot show (a list that is not a list, an entry that is not an object). */
const structural = (issue: Issue) => issue.index === null || (issue.field === null && !issue.server);

function isRejected(body: unknown): body is ExtrasRejected {
  return body !== null && typeof body === 'object' && Array.isArray((body as ExtrasRejected).errors);
}

function isConflicted(body: unknown): body is ExtrasConflicted {
  return body !== null && typeof body === 'object' && Array.isArray((body as ExtrasConflicted).conflicts);
}

/** A rule's text: the client's codes are translated, the server's words shown as they are. */
function ruleText(t: Translate, issue: Issue): string {
  return issue.server ? issue.rule : t(`models.rule.${issue.rule}`);
}

/** The summary's first line: the checks here, the server's refusal, or why the save failed. */
function summaryHeading(t: Translate, refusal: Refusal | null, count: number): string {
  if (!refusal) return t('models.extras.checksFailed', { count });
  // The server's message repeats its first rule; the list below says them all.
  return refusal.issues.length > 0 ? t('models.extras.refused', { count: refusal.issues.length }) : refusal.message;
}

/** What a save did, one line per kind of outcome that happened. */
function savedLines(t: Translate, answer: ExtrasSaved): string[] {
  const lines = [
    t('models.extras.saved', { file: answer.file, version: answer.version }),
    t('models.extras.savedCounts', { started: answer.conversions.length, unchanged: answer.unchanged.length }),
  ];
  // One line per reason: a whole demo catalogue is skipped for the same one.
  const byReason = new Map<string, string[]>();
  for (const item of answer.skipped) byReason.set(item.reason, [...(byReason.get(item.reason) ?? []), item.name]);
  for (const [reason, names] of byReason) {
    lines.push(t('models.extras.skipped', { list: names.join(', '), reason }));
  }
  if (answer.errors.length > 0) {
    lines.push(t('models.extras.saveErrors', { list: answer.errors.map(([name, message]) => `${name}: ${message}`).join('; ') }));
  }
  return lines;
}

export function ExtrasEditor({ onSaved }: { onSaved(): void }) {
  const { client } = useApp();
  const { t } = useI18n();
  const notify = useNotices((s) => s.push);
  const [loaded, setLoaded] = useState<Loaded>({ state: 'loading' });
  const [saved, setSaved] = useState<ExtrasDocument>({});
  const [doc, setDoc] = useState<ExtrasDocument>({});
  const [raw, setRaw] = useState<{ text: string; error: string | null } | null>(null);
  const [blocked, setBlocked] = useState(false);
  const [refusal, setRefusal] = useState<Refusal | null>(null);
  const [conflicts, setConflicts] = useState<ExtrasConflicted | null>(null);
  const [result, setResult] = useState<ExtrasSaved | null>(null);
  const [saving, setSaving] = useState(false);
  const [confirmReload, setConfirmReload] = useState(false);
  const [added, setAdded] = useState<string | null>(null);

  const current = useMemo(() => (raw ? parseExtras(raw.text) : { doc }), [raw, doc]);
  const issues = useMemo(() => ('doc' in current ? checkExtras(current.doc) : []), [current]);
  const dirty = !('doc' in current) || !sameJson(current.doc, saved);

  const show = (next: ExtrasDocument) => {
    setSaved(next);
    setDoc(next);
    // A document the forms cannot show opens as text.
    setRaw(checkExtras(next).some(structural) ? { text: serialise(next), error: null } : null);
  };

  const load = async () => {
    setLoaded({ state: 'loading' });
    setConfirmReload(false);
    setBlocked(false);
    setRefusal(null);
    setConflicts(null);
    setResult(null);
    try {
      const value = await client.extras();
      const parsed = typeof value === 'string' ? parseExtras(value) : parseExtras(JSON.stringify(value));
      if ('error' in parsed) throw new Error(parsed.error);
      show(parsed.doc);
      setLoaded({ state: 'ok', missing: null });
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        // No extras file yet: start from an empty document.
        show({});
        setLoaded({ state: 'ok', missing: err.message });
      } else {
        setLoaded({ state: 'error', message: describeError(t, err, { admin: true }) });
      }
    }
  };

  useEffect(() => {
    void load();
    // Load once; Reload asks first when there are unsaved changes.
  }, [client]);

  const editDoc = (next: ExtrasDocument) => {
    setDoc(next);
    setResult(null);
  };

  const setField = (section: ExtrasSection, index: number, key: string, value: unknown) => {
    const entry = entriesOf(doc, section)[index];
    editDoc(replaceEntry(doc, section, index, withField(entry, key, value)));
    // The server's verdict on this field no longer applies.
    setRefusal((r) => r && { ...r, issues: r.issues.filter((i) => !(i.section === section && i.index === index && i.field === key)) });
  };

  const changeShape = (next: ExtrasDocument) => {
    editDoc(next);
    // Entries moved, so the server's paths point at the wrong ones.
    setRefusal((r) => r && { ...r, issues: r.issues.filter((i) => i.index === null) });
  };

  const toggleRaw = () => {
    if (!raw) {
      setRaw({ text: serialise(doc), error: null });
      return;
    }
    const parsed = parseExtras(raw.text);
    if ('error' in parsed) return setRaw({ ...raw, error: parsed.error });
    if (checkExtras(parsed.doc).some(structural)) return setRaw({ ...raw, error: t('models.extras.rawShape') });
    changeShape(parsed.doc);
    setRaw(null);
  };

  const save = async () => {
    let next = doc;
    if (raw) {
      const parsed = parseExtras(raw.text);
      if ('error' in parsed) return setRaw({ ...raw, error: parsed.error });
      next = parsed.doc;
    }
    const found = checkExtras(next);
    if (found.length > 0) {
      setBlocked(true);
      // Show the problems next to their fields, where the forms can.
      if (raw && !found.some(structural)) {
        setDoc(next);
        setRaw(null);
      }
      return;
    }
    setSaving(true);
    setBlocked(false);
    setRefusal(null);
    setConflicts(null);
    setResult(null);
    try {
      const answer = await client.saveExtras(serialise(next));
      setSaved(next);
      setDoc(next);
      if (raw) setRaw({ text: serialise(next), error: null });
      setResult(answer);
      notify({ kind: 'info', text: savedLines(t, answer).join(' ') });
      onSaved();
    } catch (err) {
      if (err instanceof ApiError && err.status === 400 && isRejected(err.body)) {
        const rejected = err.body;
        setRefusal({
          message: rejected.error || err.message,
          issues: rejected.errors.map(({ field, rule }) => ({ ...parseFieldPath(field), rule, path: field, server: true })),
        });
        setDoc(next);
        setRaw(null);
      } else if (err instanceof ApiError && err.status === 409 && isConflicted(err.body)) {
        setConflicts({ error: err.body.error || err.message, conflicts: err.body.conflicts });
      } else {
        setRefusal({ message: describeError(t, err, { admin: true }), issues: [] });
      }
    } finally {
      setSaving(false);
    }
  };

  const cancelConversion = async (name: string, job: string) => {
    try {
      await client.cancel([job]);
      notify({ kind: 'info', text: t('models.conversions.cancelled', { name }) });
      setConflicts((c) => {
        const rest = c ? c.conflicts.filter((x) => x.job !== job) : [];
        return c && rest.length > 0 ? { ...c, conflicts: rest } : null;
      });
      onSaved();
    } catch (err) {
      notify({ kind: 'error', text: describeError(t, err) });
    }
  };

  if (loaded.state === 'loading') return <p aria-busy="true">{t('common.loading')}</p>;
  if (loaded.state === 'error') {
    return (
      <>
        <p className="form-error" role="alert" data-testid="extras-error">
          {loaded.message}
        </p>
        <button type="button" onClick={() => void load()}>
          {t('models.extras.reload')}
        </button>
      </>
    );
  }

  const shown = raw ? [] : issues;
  const serverIssues = refusal?.issues ?? [];
  const summary = [...(blocked ? issues : []), ...serverIssues];

  return (
    <div className="extras-editor" data-testid="extras">
      <div className="button-row extras-toolbar">
        <button type="button" className="primary" onClick={() => void save()} disabled={saving} data-testid="extras-save">
          {saving ? t('models.extras.saving') : t('common.save')}
        </button>
        <button type="button" onClick={() => (dirty ? setConfirmReload(true) : void load())} data-testid="extras-reload">
          {t('models.extras.reload')}
        </button>
        <button type="button" onClick={toggleRaw} aria-pressed={raw !== null} data-testid="extras-raw">
          {t('models.extras.raw')}
        </button>
        {dirty && (
          <span className="badge warn" data-testid="extras-dirty">
            {t('models.extras.unsaved')}
          </span>
        )}
      </div>
      {loaded.missing && <p className="hint">{t('models.extras.missing', { message: loaded.missing })}</p>}
      {confirmReload && (
        <ConfirmBar
          text={t('models.extras.reloadConfirm')}
          confirmLabel={t('models.extras.discard')}
          onConfirm={() => void load()}
          onCancel={() => setConfirmReload(false)}
          testId="extras-reload-confirm"
        />
      )}
      {(summary.length > 0 || refusal) && (
        <div className="form-error" role="alert" data-testid="extras-summary">
          <p>{summaryHeading(t, refusal, summary.length)}</p>
          {summary.length > 0 && (
            <ul>
              {summary.map((issue, i) => (
                <li key={i}>
                  {issue.path && <code>{issue.path}</code>} {ruleText(t, issue)}
                </li>
              ))}
            </ul>
          )}
        </div>
      )}
      {conflicts && (
        <div className="form-error" role="alert" data-testid="extras-conflicts">
          <p>{conflicts.error}</p>
          <ul>
            {conflicts.conflicts.map((c) => (
              <li key={c.job} className="inline" data-testid="extras-conflict">
                <span>{t('models.extras.conflict', { name: c.name, job: c.job })}</span>
                <button type="button" onClick={() => void cancelConversion(c.name, c.job)} data-testid="extras-conflict-cancel">
                  {t('models.conversions.cancel')}
                </button>
              </li>
            ))}
          </ul>
        </div>
      )}
      {result && (
        <div className="extras-result" role="status" data-testid="extras-result">
          {savedLines(t, result).map((line) => (
            <p key={line}>{line}</p>
          ))}
        </div>
      )}
      {raw ? (
        <RawEditor text={raw.text} error={raw.error} onChange={(text) => setRaw({ text, error: null })} />
      ) : (
        EXTRAS_SECTIONS.map((section) => (
          <SectionEditor
            key={section}
            section={section}
            entries={entriesOf(doc, section)}
            issues={[...shown, ...serverIssues].filter((i) => i.section === section)}
            added={added}
            onField={(index, key, value) => setField(section, index, key, value)}
            onAdd={(entry) => {
              changeShape(addEntry(doc, section, entry));
              setAdded(`${section}:${entriesOf(doc, section).length}`);
            }}
            onRemove={(index) => changeShape(removeEntry(doc, section, index))}
          />
        ))
      )}
    </div>
  );
}

function RawEditor({ text, error, onChange }: { text: string; error: string | null; onChange(text: string): void }) {
  const { t } = useI18n();
  const id = useId();
  return (
    <div className="field text-field">
      <label htmlFor={id}>{t('models.extras.rawLabel')}</label>
      <textarea
        id={id}
        className="extras-raw"
        value={text}
        rows={20}
        spellCheck={false}
        aria-invalid={error !== null}
        aria-describedby={error ? `${id}-error` : undefined}
        onChange={(e) => onChange(e.target.value)}
        data-testid="extras-raw-text"
      />
      {error && (
        <p id={`${id}-error`} className="form-error" role="alert" data-testid="extras-raw-error">
          {t('models.extras.parseError', { message: error })}
        </p>
      )}
    </div>
  );
}

interface SectionEditorProps {
  section: ExtrasSection;
  entries: ExtrasEntry[];
  issues: Issue[];
  /** `<section>:<index>` of the entry just added, shown open. */
  added: string | null;
  onField(index: number, key: string, value: unknown): void;
  onAdd(entry: ExtrasEntry): void;
  onRemove(index: number): void;
}

function SectionEditor({ section, entries, issues, added, onField, onAdd, onRemove }: SectionEditorProps) {
  const { t } = useI18n();
  const own = issues.filter((i) => i.index === null);
  return (
    <Section
      title={t(`models.${section}`)}
      badge={String(entries.length)}
      open={issues.length > 0 || added?.startsWith(`${section}:`)}
      testId={`extras-section-${section}`}
    >
      {own.map((issue, i) => (
        <p key={i} className="form-error" role="alert" data-testid="extras-issue">
          {ruleText(t, issue)}
        </p>
      ))}
      {entries.length === 0 && <p className="empty">{t('models.none')}</p>}
      {entries.map((entry, index) => (
        <EntryEditor
          key={index}
          section={section}
          index={index}
          entry={entry}
          issues={issues.filter((i) => i.index === index)}
          open={added === `${section}:${index}`}
          onField={(key, value) => onField(index, key, value)}
          onRemove={() => onRemove(index)}
        />
      ))}
      <AddEntry section={section} onAdd={onAdd} />
    </Section>
  );
}

interface EntryEditorProps {
  section: ExtrasSection;
  index: number;
  entry: ExtrasEntry;
  issues: Issue[];
  open: boolean;
  onField(key: string, value: unknown): void;
  onRemove(): void;
}

function EntryEditor({ section, index, entry, issues, open, onField, onRemove }: EntryEditorProps) {
  const { t } = useI18n();
  const name = typeof entry.name === 'string' ? entry.name : '';
  const label = typeof entry.label === 'string' ? entry.label : '';
  const own = issues.filter((i) => i.field === null);
  const ref = useOpenWhen(open || issues.length > 0);
  return (
    <details
      ref={ref}
      className="extras-entry"
      data-testid="extras-entry"
      data-section={section}
      data-index={index}
      data-name={name}
    >
      <summary>
        <code>{name || t('models.extras.unnamed')}</code>
        {label && <span className="hint">{label}</span>}
        {issues.length > 0 && <span className="badge warn">{t('models.extras.issueCount', { count: issues.length })}</span>}
      </summary>
      {own.map((issue, i) => (
        <p key={i} className="form-error" role="alert" data-testid="extras-issue">
          {ruleText(t, issue)}
        </p>
      ))}
      <div className="field-grid">
        {fieldsOf(section, entry).map((spec) => (
          <EntryField
            key={spec.key}
            spec={spec}
            value={entry[spec.key]}
            issues={issues.filter((i) => i.field === spec.key)}
            onChange={(value) => onField(spec.key, value)}
          />
        ))}
      </div>
      <div className="button-row">
        <button type="button" className="danger" onClick={onRemove} data-testid="extras-remove">
          {t('models.extras.remove')}
        </button>
      </div>
    </details>
  );
}

/** Text typed into a field that is stored as something else (a number, a list), kept while typing. */
function useTypedText(value: unknown, show: (value: unknown) => string, parse: (text: string) => unknown) {
  const [text, setText] = useState(show(value));
  useEffect(() => {
    // Follow the document unless it already holds what the text says ("1." is 1, "a," is [a]).
    if (!sameJson(parse(text), value)) setText(show(value));
  }, [value]);
  return [text, setText] as const;
}

const numberOf = (text: string): unknown => {
  if (text.trim() === '') return undefined;
  const n = Number(text);
  // Kept as text, so the check says it is not a number rather than the typing being lost.
  return Number.isFinite(n) ? n : text;
};
const showValue = (value: unknown) => (value === undefined || value === null ? '' : String(value));
const listOf = (text: string): unknown => {
  const list = parseList(text);
  return list.length === 0 ? undefined : list;
};

interface EntryFieldProps {
  spec: FieldSpec;
  value: unknown;
  issues: Issue[];
  onChange(value: unknown): void;
}

function EntryField({ spec, value, issues, onChange }: EntryFieldProps) {
  const { t } = useI18n();
  const id = useId();
  const label = `${t(`models.field.${spec.key}`)}${spec.required ? ' *' : ''}`;
  const invalid = issues.length > 0;
  const common = {
    id,
    'aria-invalid': invalid,
    'aria-describedby': invalid ? `${id}-issues` : undefined,
    'data-testid': `extras-field-${spec.key}`,
  };
  if (spec.kind === 'bool') {
    return (
      <div className="field">
        <label className="check-field">
          <input type="checkbox" checked={value === true} onChange={(e) => onChange(e.target.checked)} {...common} />
          <span>{label}</span>
        </label>
        <FieldIssues id={`${id}-issues`} issues={issues} />
      </div>
    );
  }
  let control: ReactNode;
  if (spec.kind === 'select') {
    const current = showValue(value);
    const known = current === '' || (spec.options ?? []).includes(current);
    control = (
      <select value={current} onChange={(e) => onChange(e.target.value)} {...common}>
        <option value="">{t('models.extras.unset')}</option>
        {!known && <option value={current}>{current}</option>}
        {(spec.options ?? []).map((o) => (
          <option key={o} value={o}>
            {o}
          </option>
        ))}
      </select>
    );
  } else if (spec.kind === 'number') {
    control = <TypedInput value={value} show={showValue} parse={numberOf} inputMode="decimal" onChange={onChange} common={common} />;
  } else if (spec.kind === 'list') {
    control = <TypedInput value={value} show={listText} parse={listOf} onChange={onChange} common={common} />;
  } else {
    control = <input type="text" value={showValue(value)} onChange={(e) => onChange(e.target.value)} {...common} />;
  }
  return (
    <div className="field text-field">
      <label htmlFor={id}>{label}</label>
      {control}
      {spec.kind === 'list' && <small className="hint">{t('models.extras.listHint')}</small>}
      <FieldIssues id={`${id}-issues`} issues={issues} />
    </div>
  );
}

interface TypedInputProps {
  value: unknown;
  show(value: unknown): string;
  parse(text: string): unknown;
  inputMode?: 'decimal';
  onChange(value: unknown): void;
  common: Record<string, unknown>;
}

function TypedInput({ value, show, parse, inputMode, onChange, common }: TypedInputProps) {
  const [text, setText] = useTypedText(value, show, parse);
  return (
    <input
      type="text"
      inputMode={inputMode}
      value={text}
      onChange={(e) => {
        setText(e.target.value);
        onChange(parse(e.target.value));
      }}
      {...common}
    />
  );
}

function FieldIssues({ id, issues }: { id: string; issues: Issue[] }) {
  const { t } = useI18n();
  if (issues.length === 0) return null;
  return (
    <div id={id}>
      {issues.map((issue, i) => (
        <p key={i} className="field-issue" role="alert" data-testid="extras-issue" data-field={issue.field ?? ''}>
          {ruleText(t, issue)}
        </p>
      ))}
    </div>
  );
}

/** Label and source, and the name onnx-web would give them (editable; it follows the label until edited). */
function AddEntry({ section, onAdd }: { section: ExtrasSection; onAdd(entry: ExtrasEntry): void }) {
  const { t } = useI18n();
  const id = useId();
  const [label, setLabel] = useState('');
  const [source, setSource] = useState('');
  const [name, setName] = useState<string | null>(null);
  const shownName = name ?? entryName(section, label);
  const ready = label.trim() !== '' && source.trim() !== '' && shownName.trim() !== '';
  return (
    <fieldset className="extras-add" data-testid={`extras-add-${section}`}>
      <legend>{t('models.extras.add')}</legend>
      <div className="field-grid">
        <div className="field text-field">
          <label htmlFor={`${id}-label`}>{t('models.field.label')}</label>
          <input id={`${id}-label`} type="text" value={label} onChange={(e) => setLabel(e.target.value)} data-testid="extras-add-label" />
        </div>
        <div className="field text-field">
          <label htmlFor={`${id}-name`}>{t('models.field.name')}</label>
          <input id={`${id}-name`} type="text" value={shownName} onChange={(e) => setName(e.target.value)} data-testid="extras-add-name" />
        </div>
        <div className="field text-field">
          <label htmlFor={`${id}-source`}>{t('models.field.source')}</label>
          <input id={`${id}-source`} type="text" value={source} onChange={(e) => setSource(e.target.value)} data-testid="extras-add-source" />
        </div>
      </div>
      <div className="button-row">
        <button
          type="button"
          disabled={!ready}
          onClick={() => {
            onAdd({ name: shownName.trim(), label: label.trim(), source: source.trim() });
            setLabel('');
            setSource('');
            setName(null);
          }}
          data-testid="extras-add-button"
        >
          {t('models.extras.addButton')}
        </button>
      </div>
    </fieldset>
  );
}
