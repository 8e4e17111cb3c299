import { act } from 'react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { type ImageRef, isUploadFormat, UPLOAD_TYPES } from '../state/images';
import { byTestId, type Rendered, render } from '../test/render';
import { ImageInput } from './ImageInput';

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
