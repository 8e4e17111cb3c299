/** An image slot: pick a file or drop one, see it, clear it. */
import { type DragEvent, useId, useState } from 'react';
import type { ServerLimits } from '../client/types';
import { formatBytes, type Language, type Translate, useI18n } from '../i18n';
import { type ImageRef, isUploadFormat, loadImageRef, UPLOAD_TYPES, type UploadProblem, uploadProblem } from '../state/images';

/** An upload the server would refuse by its size, said with both numbers, grouped as `language` writes them. */
export function uploadProblemText(t: Translate, language: Language, file: string, problem: UploadProblem): string {
  const number = (n: number) => n.toLocaleString(language);
  const [size, limit] =
    problem.kind === 'bytes' ? [formatBytes(problem.size), formatBytes(problem.limit)] : [number(problem.size), number(problem.limit)];
  return t(`image.tooLarge.${problem.kind}`, { file, size, limit });
}

interface ImageInputProps {
  label: string;
  image: ImageRef | null;
  onChange(image: ImageRef | null): void;
  testId: string;
  /** Hide the preview when a mask canvas already shows this image. */
  preview?: boolean;
  /** The server's limits: an image past them is refused here, before its upload. */
  limits?: ServerLimits | null;
}

export function ImageInput({ label, image, onChange, testId, preview = true, limits = null }: ImageInputProps) {
  const id = useId();
  const { t, language } = useI18n();
  const [over, setOver] = useState(false);
  const [error, setError] = useState('');

  const accept = async (file: File | undefined) => {
    if (!file) return;
    setError('');
    if (!(await isUploadFormat(file).catch(() => false))) {
      setError(t('image.wrongType', { file: file.name }));
      return;
    }
    let loaded: ImageRef;
    try {
      loaded = await loadImageRef(file, file.name);
    } catch {
      setError(t('image.unreadable', { file: file.name }));
      return;
    }
    const problem = uploadProblem({ bytes: file.size, width: loaded.width, height: loaded.height }, limits);
    if (problem) {
      URL.revokeObjectURL(loaded.url);
      setError(uploadProblemText(t, language, file.name, problem));
      return;
    }
    onChange(loaded);
  };

  const onDrop = (e: DragEvent) => {
    // Handled here, not by the page-wide drop that loads parameters.
    e.preventDefault();
    e.stopPropagation();
    setOver(false);
    void accept(e.dataTransfer.files[0]);
  };

  return (
    <div
      className={`image-input${over ? ' over' : ''}${image ? ' filled' : ''}`}
      data-testid={testId}
      onDragOver={(e) => {
        e.preventDefault();
        e.stopPropagation();
        setOver(true);
      }}
      onDragLeave={() => setOver(false)}
      onDrop={onDrop}
    >
      <div className="image-input-head">
        <label htmlFor={id} className="image-input-label">
          {label}
        </label>
        {image && (
          <span className="image-meta">
            {image.width} × {image.height}
          </span>
        )}
      </div>
      {image && preview && <img src={image.url} alt={t('image.preview', { label })} className="image-preview" />}
      <div className="image-input-actions">
        <input
          id={id}
          type="file"
          accept={UPLOAD_TYPES}
          className="visually-hidden"
          tabIndex={-1}
          onChange={(e) => {
            void accept(e.target.files?.[0]);
            e.target.value = '';
          }}
        />
        <button type="button" onClick={() => (document.getElementById(id) as HTMLInputElement).click()}>
          {image ? t('image.replace') : t('image.choose')}
        </button>
        {!image && <span className="hint">{t('image.drop')}</span>}
        {image && (
          <button type="button" onClick={() => onChange(null)}>
            {t('image.clear')}
          </button>
        )}
      </div>
      {error && (
        <p className="form-error" role="alert">
          {error}
        </p>
      )}
    </div>
  );
}
