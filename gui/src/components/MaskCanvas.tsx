/**
 * The mask editor: paint over the source at its true aspect ratio, or upload a mask made
 * elsewhere. White is repainted, black kept. The mask lives at the source's own resolution
 * (capped), so the server never has to stretch it.
 */
import { type DragEvent, type PointerEvent, useCallback, useEffect, useId, useRef, useState } from 'react';
import { useI18n } from '../i18n';
import type { ImageRef } from '../state/images';
import { NumberField } from './fields';
import { saveBlob } from './outputs';

/** Masks larger than this on their longest side are drawn smaller; the server scales them to fit. */
export const MAX_MASK_SIDE = 2048;
const UNDO_DEPTH = 10;
const BRUSH = { default: 48, min: 2, max: 256, step: 1 };
const GREY = { default: 255, min: 0, max: 255, step: 1 };

export function maskSize(source: { width: number; height: number }): { width: number; height: number } {
  const scale = Math.min(1, MAX_MASK_SIDE / Math.max(source.width, source.height));
  return { width: Math.max(1, Math.round(source.width * scale)), height: Math.max(1, Math.round(source.height * scale)) };
}

/** Invert every pixel of an RGBA buffer in place, keeping alpha. */
export function invertPixels(data: Uint8ClampedArray): void {
  for (let i = 0; i < data.length; i += 4) {
    data[i] = 255 - data[i];
    data[i + 1] = 255 - data[i + 1];
    data[i + 2] = 255 - data[i + 2];
  }
}

/**
 * Turn an uploaded picture into mask pixels in place: grey by luminance (Rec. 601), laid over
 * black so transparent parts keep the source, fully opaque — what a painted mask looks like.
 */
export function greyscaleMask(data: Uint8ClampedArray): void {
  for (let i = 0; i < data.length; i += 4) {
    const alpha = data[i + 3] / 255;
    const grey = Math.round((0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2]) * alpha);
    data[i] = grey;
    data[i + 1] = grey;
    data[i + 2] = grey;
    data[i + 3] = 255;
  }
}

/** Whether an uploaded mask has another shape than the source (more than 1 % apart), so it is stretched. */
export function stretchesMask(mask: { width: number; height: number }, source: { width: number; height: number }): boolean {
  return Math.abs(mask.width / mask.height - source.width / source.height) > 0.01 * (source.width / source.height);
}

interface MaskCanvasProps {
  source: ImageRef;
  mask: Blob | null;
  onMask(mask: Blob): void;
}

export function MaskCanvas({ source, mask, onMask }: MaskCanvasProps) {
  const { t } = useI18n();
  const canvasRef = useRef<HTMLCanvasElement>(null);
  const undo = useRef<ImageData[]>([]);
  const last = useRef<{ x: number; y: number } | null>(null);
  const [brush, setBrush] = useState(BRUSH.default);
  const [grey, setGrey] = useState(GREY.default);
  const [cursor, setCursor] = useState<{ x: number; y: number; size: number } | null>(null);
  const [undoCount, setUndoCount] = useState(0);
  const [uploadNote, setUploadNote] = useState<{ kind: 'hint' | 'error'; text: string } | null>(null);
  const fileId = useId();
  const size = maskSize(source);

  const context = () => canvasRef.current?.getContext('2d', { willReadFrequently: true }) ?? null;

  const save = useCallback(() => {
    canvasRef.current?.toBlob((blob) => {
      if (blob) onMask(blob);
    }, 'image/png');
  }, [onMask]);

  // Restore the stored mask when it fits this source; otherwise start all black (keep everything).
  useEffect(() => {
    const ctx = context();
    if (!ctx) return;
    let live = true;
    const fresh = () => {
      ctx.fillStyle = '#000';
      ctx.fillRect(0, 0, size.width, size.height);
      save();
    };
    undo.current = [];
    setUndoCount(0);
    if (!mask) {
      fresh();
      return;
    }
    const url = URL.createObjectURL(mask);
    const img = new Image();
    img.onload = () => {
      if (!live) return;
      if (img.naturalWidth === size.width && img.naturalHeight === size.height) ctx.drawImage(img, 0, 0);
      else fresh();
      URL.revokeObjectURL(url);
    };
    img.onerror = () => {
      URL.revokeObjectURL(url);
      if (live) fresh();
    };
    img.src = url;
    return () => {
      live = false;
    };
    // The mask blob changes on every stroke; restoring only depends on which source is shown.
  }, [source.url, size.width, size.height]);

  const snapshot = () => {
    const ctx = context();
    if (!ctx) return;
    undo.current = [...undo.current.slice(-(UNDO_DEPTH - 1)), ctx.getImageData(0, 0, size.width, size.height)];
    setUndoCount(undo.current.length);
  };

  /** Pointer position in mask pixels, and how many mask pixels one screen pixel covers. */
  const toMask = (e: PointerEvent<HTMLCanvasElement>) => {
    const rect = e.currentTarget.getBoundingClientRect();
    const ratio = size.width / rect.width;
    return { x: (e.clientX - rect.left) * ratio, y: (e.clientY - rect.top) * ratio, ratio, rect };
  };

  const stroke = (from: { x: number; y: number }, to: { x: number; y: number }, ratio: number) => {
    const ctx = context();
    if (!ctx) return;
    ctx.strokeStyle = `rgb(${grey},${grey},${grey})`;
    ctx.lineWidth = brush * ratio;
    ctx.lineCap = 'round';
    ctx.lineJoin = 'round';
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
  };

  const onDown = (e: PointerEvent<HTMLCanvasElement>) => {
    e.preventDefault();
    e.currentTarget.setPointerCapture(e.pointerId);
    snapshot();
    const p = toMask(e);
    last.current = p;
    stroke(p, p, p.ratio);
  };

  const onMove = (e: PointerEvent<HTMLCanvasElement>) => {
    const p = toMask(e);
    setCursor({ x: e.clientX - p.rect.left, y: e.clientY - p.rect.top, size: brush });
    if (!last.current) return;
    stroke(last.current, p, p.ratio);
    last.current = p;
  };

  const onUp = () => {
    if (!last.current) return;
    last.current = null;
    save();
  };

  const fill = (value: number) => {
    const ctx = context();
    if (!ctx) return;
    snapshot();
    ctx.fillStyle = `rgb(${value},${value},${value})`;
    ctx.fillRect(0, 0, size.width, size.height);
    save();
  };

  const invert = () => {
    const ctx = context();
    if (!ctx) return;
    snapshot();
    const data = ctx.getImageData(0, 0, size.width, size.height);
    invertPixels(data.data);
    ctx.putImageData(data, 0, 0);
    save();
  };

  const undoLast = () => {
    const ctx = context();
    const previous = undo.current.pop();
    setUndoCount(undo.current.length);
    if (!ctx || !previous) return;
    ctx.putImageData(previous, 0, 0);
    save();
  };

  /** Draw an uploaded mask over the whole canvas (stretched to the source's shape) and use it. */
  const upload = async (file: File | undefined) => {
    const ctx = context();
    if (!file || !ctx) return;
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.src = url;
    try {
      await img.decode();
      snapshot();
      ctx.fillStyle = '#000';
      ctx.fillRect(0, 0, size.width, size.height);
      ctx.drawImage(img, 0, 0, size.width, size.height);
      const data = ctx.getImageData(0, 0, size.width, size.height);
      greyscaleMask(data.data);
      ctx.putImageData(data, 0, 0);
      save();
      const uploaded = { width: img.naturalWidth, height: img.naturalHeight };
      setUploadNote({
        kind: 'hint',
        text: stretchesMask(uploaded, source)
          ? t('mask.stretched', { file: file.name, ...uploaded })
          : t('mask.uploaded', { file: file.name }),
      });
    } catch {
      setUploadNote({ kind: 'error', text: t('image.unreadable', { file: file.name }) });
    } finally {
      URL.revokeObjectURL(url);
    }
  };

  const onDrop = (e: DragEvent) => {
    // A file dropped on the mask is the mask, not parameters for the page-wide drop.
    e.preventDefault();
    e.stopPropagation();
    void upload(e.dataTransfer.files[0]);
  };

  const download = () => {
    canvasRef.current?.toBlob((blob) => {
      if (blob) saveBlob('mask.png', blob);
    }, 'image/png');
  };

  return (
    <div className="mask-editor" data-testid="mask-editor">
      <div
        className="mask-stage"
        style={{ aspectRatio: `${size.width} / ${size.height}` }}
        onDragOver={(e) => {
          e.preventDefault();
          e.stopPropagation();
        }}
        onDrop={onDrop}
      >
        <img src={source.url} alt="" className="mask-source" draggable={false} />
        <canvas
          ref={canvasRef}
          width={size.width}
          height={size.height}
          className="mask-canvas"
          role="img"
          aria-label={t('mask.canvas')}
          data-testid="mask-canvas"
          onPointerDown={onDown}
          onPointerMove={onMove}
          onPointerUp={onUp}
          onPointerCancel={onUp}
          onPointerLeave={() => setCursor(null)}
        />
        {cursor && (
          <span
            className="brush-cursor"
            aria-hidden="true"
            style={{ left: cursor.x, top: cursor.y, width: cursor.size, height: cursor.size }}
          />
        )}
      </div>
      <div className="field-grid">
        <NumberField label={t('mask.brushSize')} value={brush} spec={BRUSH} onChange={setBrush} />
        <NumberField label={t('mask.brushGrey')} value={grey} spec={GREY} onChange={setGrey} hint={t('mask.greyHint')} />
      </div>
      <div className="button-row" role="toolbar" aria-label={t('mask.tools')} data-testid="mask-upload">
        <input
          id={fileId}
          type="file"
          accept="image/*"
          className="visually-hidden"
          tabIndex={-1}
          aria-label={t('mask.upload')}
          onChange={(e) => {
            void upload(e.target.files?.[0]);
            e.target.value = '';
          }}
        />
        <button type="button" onClick={() => (document.getElementById(fileId) as HTMLInputElement).click()}>
          {t('mask.upload')}
        </button>
        <button type="button" onClick={() => fill(0)}>
          {t('mask.fillBlack')}
        </button>
        <button type="button" onClick={() => fill(255)} data-testid="mask-fill-white">
          {t('mask.fillWhite')}
        </button>
        <button type="button" onClick={invert}>
          {t('mask.invert')}
        </button>
        <button type="button" onClick={undoLast} disabled={undoCount === 0}>
          {t('mask.undo')}
        </button>
        <button type="button" onClick={download}>
          {t('mask.download')}
        </button>
      </div>
      {uploadNote && (
        <p className={uploadNote.kind === 'error' ? 'form-error' : 'hint'} role={uploadNote.kind === 'error' ? 'alert' : 'status'} data-testid="mask-upload-note">
          {uploadNote.text}
        </p>
      )}
    </div>
  );
}
