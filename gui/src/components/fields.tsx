/** Labelled form controls. Every input has a visible label tied to it; ranges come from the server. */
import { type ReactNode, useEffect, useId, useRef, useState } from 'react';
import type { NumberSpec } from '../state/params';

const decimalsOf = (n: number) => (String(n).split('.')[1] ?? '').length;

/** Round to the step's decimals so 0.1 + 0.2 shows as 0.3. */
export function roundToStep(value: number, step: number, min = 0): number {
  return Number(value.toFixed(Math.min(10, Math.max(decimalsOf(step), decimalsOf(min)))));
}

/**
 * The nearest value the server accepts: inside the range and on the step's grid counted from
 * `min` (width 513 with step 8 is refused by the server, so it becomes 512), never above `max`.
 */
export function clampToSpec(value: number, spec: Pick<NumberSpec, 'min' | 'max' | 'step'>): number {
  const { min, max, step } = spec;
  const inRange = Math.min(max, Math.max(min, value));
  const steps = Math.round((inRange - min) / step);
  const lastStep = Math.floor((max - min) / step + 1e-9);
  return roundToStep(min + Math.min(steps, lastStep) * step, step, min);
}

/** Whether the server would take this value as it is: in range and on the step's grid. */
export function fitsSpec(value: number, spec: Pick<NumberSpec, 'min' | 'max' | 'step'>): boolean {
  return Number.isFinite(value) && Math.abs(clampToSpec(value, spec) - value) < 1e-9;
}

interface NumberFieldProps {
  label: string;
  value: number;
  spec: NumberSpec;
  onChange(value: number): void;
  disabled?: boolean;
  /** Sliders are pointless for values like seeds; those get the number box alone. */
  slider?: boolean;
  hint?: string;
  children?: ReactNode;
  testId?: string;
}

/**
 * A slider and a number box that edit the same value; typing is free, and on commit (blur, Enter)
 * the value is brought into the range and onto the step's grid, so what is sent is what is shown.
 */
export function NumberField({
  label,
  value,
  spec,
  onChange,
  disabled,
  slider = true,
  hint,
  children,
  testId,
}: NumberFieldProps) {
  const id = useId();
  const [text, setText] = useState(String(value));
  useEffect(() => setText(String(value)), [value]);

  const commit = (raw: string) => {
    const parsed = Number(raw);
    if (raw.trim() === '' || !Number.isFinite(parsed)) {
      setText(String(value));
      return;
    }
    const next = clampToSpec(parsed, spec);
    setText(String(next));
    if (next !== value) onChange(next);
  };

  return (
    <div className={`field number-field${slider ? '' : ' no-slider'}`} data-testid={testId}>
      <label htmlFor={id}>{label}</label>
      <div className="number-row">
        {slider && (
          <input
            type="range"
            aria-label={label}
            tabIndex={-1}
            min={spec.min}
            max={spec.max}
            step={spec.step}
            value={value}
            disabled={disabled}
            onChange={(e) => onChange(clampToSpec(Number(e.target.value), spec))}
          />
        )}
        <input
          id={id}
          type="number"
          inputMode="decimal"
          min={spec.min}
          max={spec.max}
          step={spec.step}
          value={text}
          disabled={disabled}
          aria-describedby={hint ? `${id}-hint` : undefined}
          onChange={(e) => {
            setText(e.target.value);
            const parsed = Number(e.target.value);
            // A value off the range or the step's grid waits for the commit, which corrects it.
            if (e.target.value.trim() !== '' && fitsSpec(parsed, spec)) onChange(parsed);
          }}
          onBlur={(e) => commit(e.target.value)}
          onKeyDown={(e) => {
            if (e.key === 'Enter') commit((e.target as HTMLInputElement).value);
          }}
        />
        {children}
      </div>
      {hint && (
        <small id={`${id}-hint`} className="hint">
          {hint}
        </small>
      )}
    </div>
  );
}

export interface Option {
  value: string;
  label: string;
}

interface SelectFieldProps {
  label: string;
  value: string;
  options: Option[];
  onChange(value: string): void;
  disabled?: boolean;
  testId?: string;
}

export function SelectField({ label, value, options, onChange, disabled, testId }: SelectFieldProps) {
  const id = useId();
  const known = options.some((o) => o.value === value);
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      <select id={id} value={value} disabled={disabled} onChange={(e) => onChange(e.target.value)} data-testid={testId}>
        {!known && <option value={value}>{value || '—'}</option>}
        {options.map((o) => (
          <option key={o.value} value={o.value}>
            {o.label}
          </option>
        ))}
      </select>
    </div>
  );
}

interface CheckFieldProps {
  label: string;
  checked: boolean;
  onChange(checked: boolean): void;
  disabled?: boolean;
  testId?: string;
}

export function CheckField({ label, checked, onChange, disabled, testId }: CheckFieldProps) {
  return (
    <label className="check-field">
      <input
        type="checkbox"
        checked={checked}
        disabled={disabled}
        onChange={(e) => onChange(e.target.checked)}
        data-testid={testId}
      />
      <span>{label}</span>
    </label>
  );
}

interface TextFieldProps {
  label: string;
  value: string;
  onChange(value: string): void;
  multiline?: boolean;
  placeholder?: string;
  type?: string;
  testId?: string;
  rows?: number;
}

export function TextField({ label, value, onChange, multiline, placeholder, type = 'text', testId, rows = 3 }: TextFieldProps) {
  const id = useId();
  return (
    <div className="field text-field">
      <label htmlFor={id}>{label}</label>
      {multiline ? (
        <textarea
          id={id}
          value={value}
          rows={rows}
          placeholder={placeholder}
          onChange={(e) => onChange(e.target.value)}
          data-testid={testId}
        />
      ) : (
        <input
          id={id}
          type={type}
          value={value}
          placeholder={placeholder}
          onChange={(e) => onChange(e.target.value)}
          data-testid={testId}
        />
      )}
    </div>
  );
}

/**
 * A `<details>` that opens when `wanted` becomes true and is closed only by the user: as a prop,
 * `open` would also shut it under the user's hands the moment `wanted` turned false again.
 */
export function useOpenWhen(wanted: boolean | undefined) {
  const ref = useRef<HTMLDetailsElement>(null);
  useEffect(() => {
    if (wanted && ref.current) ref.current.open = true;
  }, [wanted]);
  return ref;
}

/** A collapsible group whose summary shows whether it is switched on; `open` opens it. */
export function Section({
  title,
  children,
  open,
  badge,
  testId,
}: {
  title: string;
  children: ReactNode;
  open?: boolean;
  badge?: string;
  testId?: string;
}) {
  const ref = useOpenWhen(open);
  return (
    <details className="section" ref={ref} data-testid={testId}>
      <summary>
        <span>{title}</span>
        {badge && <span className="badge">{badge}</span>}
      </summary>
      <div className="section-body">{children}</div>
    </details>
  );
}
