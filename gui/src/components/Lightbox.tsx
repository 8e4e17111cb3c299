/** The in-page image viewer: one image at a time, full size, with previous/next, download and close. */
import { useEffect, useRef } from 'react';
import { useApp } from '../context';
import { useI18n } from '../i18n';
import { outputFileName, useOutputDownload, useOutputSrc } from './outputs';

export interface ViewerImage {
  /** The output's name on the server (`/output/<output>`). */
  output: string;
  alt: string;
  /** A short line under the image (the job's prompt, or its name). */
  caption?: string;
}

interface LightboxProps {
  images: ViewerImage[];
  index: number;
  onIndex(index: number): void;
  onClose(): void;
}

/**
 * A modal dialog: Esc, the close button or a click on the backdrop dismiss it and focus returns
 * to where it was; the arrow keys and the ‹ › buttons step through `images`.
 */
export function Lightbox({ images, index, onIndex, onClose }: LightboxProps) {
  const { client } = useApp();
  const { t } = useI18n();
  const ref = useRef<HTMLDialogElement>(null);
  const image = images[index];
  const src = useOutputSrc(image?.output);
  const download = useOutputDownload();

  useEffect(() => {
    const dialog = ref.current;
    if (dialog && !dialog.open) dialog.showModal();
    return () => dialog?.close();
  }, []);

  const hasPrevious = index > 0;
  const hasNext = index < images.length - 1;

  // On the document, not the dialog: a ‹ › button that just became disabled drops the focus.
  useEffect(() => {
    const onKeyDown = (e: KeyboardEvent) => {
      if (e.key === 'ArrowLeft' && hasPrevious) onIndex(index - 1);
      else if (e.key === 'ArrowRight' && hasNext) onIndex(index + 1);
      else return;
      e.preventDefault();
    };
    document.addEventListener('keydown', onKeyDown);
    return () => document.removeEventListener('keydown', onKeyDown);
  }, [index, hasPrevious, hasNext, onIndex]);

  if (!image) return null;
  const url = client.outputUrl(image.output);
  return (
    <dialog
      ref={ref}
      className="lightbox"
      aria-label={t('viewer.title')}
      onClose={onClose}
      onClick={(e) => e.target === ref.current && onClose()}
      data-testid="lightbox"
    >
      <figure>
        <img src={src} alt={image.alt} data-testid="lightbox-image" />
        {image.caption && <figcaption>{image.caption}</figcaption>}
      </figure>
      <div className="lightbox-actions">
        <div className="lightbox-nav">
          <button type="button" className="icon" aria-label={t('viewer.previous')} disabled={!hasPrevious} onClick={() => onIndex(index - 1)} data-testid="lightbox-previous">
            ‹
          </button>
          <span className="lightbox-count" data-testid="lightbox-count">
            {t('card.page', { index: index + 1, total: images.length })}
          </span>
          <button type="button" className="icon" aria-label={t('viewer.next')} disabled={!hasNext} onClick={() => onIndex(index + 1)} data-testid="lightbox-next">
            ›
          </button>
        </div>
        <a className="button" href={url} download={outputFileName(image.output)} onClick={download(image.output)} data-testid="lightbox-download">
          {t('viewer.download')}
        </a>
        <a className="button" href={src ?? url} target="_blank" rel="noreferrer">
          {t('card.openTab')}
        </a>
        <button type="button" className="primary" onClick={onClose} autoFocus data-testid="lightbox-close">
          {t('common.close')}
        </button>
      </div>
    </dialog>
  );
}
