import { act } from 'react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createTranslator } from '../i18n';
import { bodyProblem, type ImageRef, isUploadFormat, UPLOAD_TYPES, uploadProblem } from '../state/images';
import { SERVER } from '../test/fixtures';
import { byTestId, type Rendered, render } from '../test/render';
import { ImageInput, uploadProblemText } from './ImageInput';

const PNG = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13];
const JPEG = [0xff, 0xd8, 0xff, 0xe0, 0, 16, 0x4a, 0x46, 0x49, 0x46, 0, 1];
const WEBP = [...'RIFF'].map((c) => c.charCodeAt(0)).concat([0, 0, 0, 0], [...'WEBP'].map((c) => c.charCodeAt(0)));
const GIF = [...'GIF89a'].map((c) => c.charCodeAt(0)).concat([1, 0, 1, 0, 0, 0]);
const BMP = [0x42, 0x4d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

const file = (bytes: number[], name: string, type: string) => new File([new Uint8Array(bytes)], name, { type });

let view: Rendered | null = null;

afterEach(() => {
  view?.unmount();
  view = null;
});

describe('upload formats', () => {
  it('tells PNG, JPEG and WebP from the rest by their first bytes, not by name or type', async () => {
    expect(await isUploadFormat(file(PNG, 'a.png', 'image/png'))).toBe(true);
    expect(await isUploadFormat(file(JPEG, 'a.jpg', 'image/jpeg'))).toBe(true);
    expect(await isUploadFormat(file(WEBP, 'a.webp', 'image/webp'))).toBe(true);
    expect(await isUploadFormat(file(GIF, 'a.gif', 'image/gif'))).toBe(false);
    expect(await isUploadFormat(file(BMP, 'a.bmp', 'image/bmp'))).toBe(false);
    // A GIF saved under a .png name is still a GIF to the server.
    expect(await isUploadFormat(file(GIF, 'renamed.png', 'image/png'))).toBe(false);
    expect(await isUploadFormat(file([], 'empty.png', 'image/png'))).toBe(false);
  });
});

describe('an image slot', () => {
  it('refuses a GIF or BMP the server would refuse, before anything is sent, and says which kinds it takes', async () => {
    const onChange = vi.fn((_image: ImageRef | null) => {});
    view = await render(<ImageInput label="Source image" image={null} onChange={onChange} testId="slot" />);
    const input = byTestId(view.container, 'slot')?.querySelector('input[type=file]') as HTMLInputElement;
    expect(input.accept).toBe(UPLOAD_TYPES);

    for (const [bytes, name] of [[GIF, 'cat.gif'], [BMP, 'scan.bmp']] as const) {
      Object.defineProperty(input, 'files', { value: [file([...bytes], name, 'image/x')], configurable: true });
      await act(async () => {
        input.dispatchEvent(new Event('change', { bubbles: true }));
        await new Promise((resolve) => setTimeout(resolve, 10));
      });
      const error = byTestId(view.container, 'slot')?.querySelector('[role=alert]');
      expect(error?.textContent).toContain(name);
      expect(error?.textContent).toContain('PNG, JPEG or WebP');
    }
    expect(onChange).not.toHaveBeenCalled();
  });
});

describe('upload limits', () => {
  const limits = { maxBodyBytes: 1000, maxImagePixels: 100 * 100, maxImageSide: 200, maxOutputPixels: 400 * 400 };

  it('refuses what the server would: bytes, then the longer side, then pixels; each at its limit passes', () => {
    expect(uploadProblem({ bytes: 1000, width: 100, height: 100 }, limits)).toBeNull();
    expect(uploadProblem({ bytes: 1001, width: 10, height: 10 }, limits)).toEqual({ kind: 'bytes', size: 1001, limit: 1000 });
    expect(uploadProblem({ bytes: 10, width: 201, height: 8 }, limits)).toEqual({ kind: 'side', size: 201, limit: 200 });
    expect(uploadProblem({ bytes: 10, width: 200, height: 50 }, limits)).toBeNull();
    expect(uploadProblem({ bytes: 10, width: 101, height: 100 }, limits)).toEqual({ kind: 'pixels', size: 10100, limit: 10000 });
  });

  it('refuses nothing without limits, as against onnx-web, which publishes none', () => {
    expect(uploadProblem({ bytes: 1e12, width: 1e6, height: 1e6 }, null)).toBeNull();
    expect(bodyProblem([new Blob([new Uint8Array(2000)])], undefined)).toBeNull();
  });

  it('adds the uploads of one submission against the body limit', () => {
    const part = new Blob([new Uint8Array(600)]);
    expect(bodyProblem([part], limits)).toBeNull();
    expect(bodyProblem([part, part], limits)).toEqual({ kind: 'bytes', size: 1200, limit: 1000 });
  });

  it('says both numbers, in units a person reads', () => {
    const t = createTranslator('en', {});
    const bytes = uploadProblemText(t, 'en', 'photo.png', { kind: 'bytes', size: 40 * 1024 * 1024, limit: SERVER.limits!.maxBodyBytes });
    expect(bytes).toContain('photo.png is 40 MiB');
    expect(bytes).toContain('at most 32 MiB');
    const pixels = uploadProblemText(t, 'en', 'scan.png', { kind: 'pixels', size: 20_000_000, limit: 4096 * 4096 });
    expect(pixels).toContain('20,000,000 pixels');
    expect(pixels).toContain('16,777,216');
    expect(uploadProblemText(createTranslator('de', {}), 'de', 'x.png', { kind: 'side', size: 9000, limit: 8192 })).toContain('9.000 Pixel');
  });
});
