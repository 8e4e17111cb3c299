/** Uploaded sources and painted masks: kept in memory only (too big for localStorage). */
import { create } from 'zustand';
import type { ImageFiles } from '../client/api';
import type { ServerLimits } from '../client/types';
import type { JobTab } from './params';

export interface ImageRef {
  blob: Blob;
  url: string;
  width: number;
  height: number;
  label: string;
}

export interface TabImageState {
  source: ImageRef | null;
  mask: Blob | null;
  blendSources: [ImageRef | null, ImageRef | null];
}

const EMPTY: TabImageState = { source: null, mask: null, blendSources: [null, null] };

export type ImageSlot = 'source' | 'blend0' | 'blend1';

interface ImageStore {
  tabs: Partial<Record<JobTab, TabImageState>>;
  /** The files each submitted job was sent with, so Retry works without uploading again. */
  sentFiles: Record<string, ImageFiles>;
  setImage(tab: JobTab, slot: ImageSlot, image: ImageRef | null): void;
  setMask(tab: JobTab, mask: Blob | null): void;
  rememberFiles(name: string, files: ImageFiles): void;
}

export function tabImages(state: Pick<ImageStore, 'tabs'>, tab: JobTab): TabImageState {
  return state.tabs[tab] ?? EMPTY;
}

export const useImageStore = create<ImageStore>()((set) => ({
  tabs: {},
  sentFiles: {},
  setImage: (tab, slot, image) =>
    set((s) => {
      const current = tabImages(s, tab);
      const old = slot === 'source' ? current.source : current.blendSources[slot === 'blend0' ? 0 : 1];
      if (old && old !== image) URL.revokeObjectURL(old.url);
      const next: TabImageState =
        slot === 'source'
          ? // A new source makes the old mask meaningless: it was drawn for another picture.
            { ...current, source: image, mask: image?.url === current.source?.url ? current.mask : null }
          : {
              ...current,
              blendSources: slot === 'blend0' ? [image, current.blendSources[1]] : [current.blendSources[0], image],
            };
      return { tabs: { ...s.tabs, [tab]: next } };
    }),
  setMask: (tab, mask) => set((s) => ({ tabs: { ...s.tabs, [tab]: { ...tabImages(s, tab), mask } } })),
  rememberFiles: (name, files) => set((s) => ({ sentFiles: { ...s.sentFiles, [name]: files } })),
}));

/** The image types the server decodes (everything else it refuses with a 400), as an `accept` list. */
export const UPLOAD_TYPES = 'image/png,image/jpeg,image/webp';

/**
 * Whether a file is a PNG, JPEG or WebP by its first bytes, as the server judges it: a GIF or BMP
 * the browser shows happily, or a PNG under another extension, is told apart before sending.
 */
export async function isUploadFormat(blob: Blob): Promise<boolean> {
  const head = new Uint8Array(await blob.slice(0, 12).arrayBuffer());
  const ascii = (from: number, to: number) => String.fromCharCode(...head.subarray(from, to));
  const png = head[0] === 0x89 && ascii(1, 4) === 'PNG';
  const jpeg = head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff;
  const webp = ascii(0, 4) === 'RIFF' && ascii(8, 12) === 'WEBP';
  return png || jpeg || webp;
}

/** Decode a blob far enough to know its size; rejects when it is not an image the browser reads. */
export function loadImageRef(blob: Blob, label: string): Promise<ImageRef> {
  const url = URL.createObjectURL(blob);
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve({ blob, url, width: img.naturalWidth, height: img.naturalHeight, label });
    img.onerror = () => {
      URL.revokeObjectURL(url);
      reject(new Error(`${label} is not an image this browser can read`));
    };
    img.src = url;
  });
}

/** Why the server would refuse an upload by its size, with the numbers to say so; null when it would not. */
export type UploadProblem =
  | { kind: 'bytes'; size: number; limit: number }
  | { kind: 'pixels'; size: number; limit: number }
  | { kind: 'side'; size: number; limit: number };

/**
 * The server's own checks of one upload (`GET /api/settings/limits`), made before sending it: a
 * 30 MB photo is refused in its slot, not after a long upload. Without limits nothing is refused here.
 */
export function uploadProblem(
  image: { bytes: number; width: number; height: number },
  limits: ServerLimits | null | undefined,
): UploadProblem | null {
  if (!limits) return null;
  if (image.bytes > limits.maxBodyBytes) return { kind: 'bytes', size: image.bytes, limit: limits.maxBodyBytes };
  const side = Math.max(image.width, image.height);
  if (side > limits.maxImageSide) return { kind: 'side', size: side, limit: limits.maxImageSide };
  const pixels = image.width * image.height;
  if (pixels > limits.maxImagePixels) return { kind: 'pixels', size: pixels, limit: limits.maxImagePixels };
  return null;
}

/** The bytes of a submission's uploads over the server's body limit, or null when they fit. */
export function bodyProblem(blobs: Blob[], limits: ServerLimits | null | undefined): UploadProblem | null {
  if (!limits) return null;
  const size = blobs.reduce((sum, blob) => sum + blob.size, 0);
  return size > limits.maxBodyBytes ? { kind: 'bytes', size, limit: limits.maxBodyBytes } : null;
}
