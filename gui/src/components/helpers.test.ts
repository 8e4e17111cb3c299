import { describe, expect, it } from 'vitest';
import { ApiError } from '../client/api';
import { createTranslator } from '../i18n';
import { defaultTabParams } from '../state/params';
import { describeError, normaliseRecord, submitJob } from '../submit';
import { SERVER } from '../test/fixtures';
import { clampToSpec, fitsSpec, roundToStep } from './fields';
import { fakeClient, jobRecord } from '../test/render';
import { failureText, progressLines } from './JobText';
import { greyscaleMask, invertPixels, MAX_MASK_SIDE, maskSize, stretchesMask } from './MaskCanvas';
import { addNetworkToken, addWildcard, referencedNetworks } from './PromptControls';

describe('a submission', () => {
  it('counts the queue as the status route does, though its answer counts from 1 as onnx-web\'s', async () => {
    const answer = jobRecord('txt2img_1', 'pending', { queue: { current: 2, total: 2 } });
    const client = fakeClient({ submit: () => Promise.resolve(answer) });
    const { item } = await submitJob(client, 'txt2img', defaultTabParams('txt2img', SERVER, { prompt: '', scheduler: '' }), {});
    expect(item.status.queue).toEqual({ current: 1, total: 2 });
    expect(progressLines(createTranslator('en', {}), item.status)).toEqual(['2 of 2 in the queue']);
  });
});

describe('number fields', () => {
  it('clamp into the range and round to the step', () => {
    expect(clampToSpec(31, { min: 0, max: 30, step: 0.1 })).toBe(30);
    expect(clampToSpec(0.1 + 0.2, { min: 0, max: 1, step: 0.01 })).toBe(0.3);
    expect(roundToStep(7.123456, 1)).toBe(7);
  });

  it("snap onto the step's grid, counted from the minimum, as the server requires", () => {
    const width = { min: 128, max: 8192, step: 8 };
    expect(clampToSpec(513, width)).toBe(512);
    expect(clampToSpec(517, width)).toBe(520);
    expect(fitsSpec(513, width)).toBe(false);
    expect(fitsSpec(520, width)).toBe(true);
    // A maximum off the grid is never passed: the last value on the grid is the most.
    expect(clampToSpec(100, { min: 1, max: 10, step: 4 })).toBe(9);
    expect(clampToSpec(200, { min: 128, max: 2048, step: 128 })).toBe(256);
    expect(clampToSpec(6.07, { min: 0, max: 30, step: 0.1 })).toBe(6.1);
    expect(clampToSpec(2.5, { min: 1, max: 300, step: 1 })).toBe(3);
    expect(clampToSpec(-1, { min: -1, max: 4294967295, step: 1 })).toBe(-1);
    expect(clampToSpec(1.23, { min: 1, max: 2, step: 0.05 })).toBe(1.25);
  });
});

describe('mask', () => {
  it("keeps the source's aspect ratio and caps the longest side", () => {
    expect(maskSize({ width: 640, height: 480 })).toEqual({ width: 640, height: 480 });
    expect(maskSize({ width: 8192, height: 2048 })).toEqual({ width: MAX_MASK_SIDE, height: 512 });
  });

  it('turns an uploaded picture into an opaque grey mask, transparent parts kept (black)', () => {
    const px = new Uint8ClampedArray([255, 255, 255, 255, 255, 0, 0, 255, 255, 255, 255, 0, 10, 10, 10, 128]);
    greyscaleMask(px);
    expect([...px]).toEqual([255, 255, 255, 255, 76, 76, 76, 255, 0, 0, 0, 255, 5, 5, 5, 255]);
  });

  it('knows when an uploaded mask must be stretched to the source', () => {
    expect(stretchesMask({ width: 512, height: 384 }, { width: 256, height: 192 })).toBe(false);
    expect(stretchesMask({ width: 512, height: 512 }, { width: 256, height: 192 })).toBe(true);
  });

  it('inverts colour, not alpha', () => {
    const px = new Uint8ClampedArray([0, 10, 255, 128]);
    invertPixels(px);
    expect([...px]).toEqual([255, 245, 0, 128]);
  });
});

describe('prompt pickers', () => {
  it('put networks first at weight 1.0, once, and wildcards last', () => {
    expect(addNetworkToken('a cat', 'lora', 'details')).toBe('<lora:details:1.0> a cat');
    expect(addNetworkToken('<lora:details:0.5> a cat', 'lora', 'details')).toBe('<lora:details:0.5> a cat');
    expect(addWildcard('a cat ', 'animals')).toBe('a cat __animals__');
    expect([...referencedNetworks('<lora:a:1> <inversion:b:0.5> <embeddings:c:1> x')]).toEqual(['a', 'b', 'c']);
  });
});

describe('errors and records', () => {
  const t = createTranslator('en');

  it('tells a refused request, a missing feature and an unreachable server apart', () => {
    expect(describeError(t, new ApiError('http', 400, 'steps: must be at most 300'))).toBe(
      'The server refused the request: steps: must be at most 300',
    );
    expect(describeError(t, new ApiError('http', 501, 'img2img comes later'))).toBe('Not available on this server yet: img2img comes later');
    expect(describeError(t, new ApiError('network', 0, 'cannot reach x'))).toMatch(/could not be reached/);
    expect(describeError(t, new ApiError('http', 500, '500 Internal Server Error'))).toBe('The server answered 500: 500 Internal Server Error');
    expect(describeError(t, new ApiError('http', 429, 'rate limit of API key k: 2 requests per minute', null, 41))).toBe(
      'The server answered 429: rate limit of API key k: 2 requests per minute. Try again in 41 s.',
    );
  });

  it('sends a refused API key to Settings, and a refused admin call to the admin token', () => {
    expect(describeError(t, new ApiError('http', 401, 'an API key is required'))).toBe(
      'The server refused the request: an API key is required. Set a valid API key in Settings.',
    );
    expect(describeError(t, new ApiError('http', 403, 'nope'), { admin: true })).toBe('Not allowed: nope (check the admin token)');
  });

  it('fills counters an older server leaves out of a submission answer', () => {
    expect(normaliseRecord({ name: 'n' })).toEqual({
      name: 'n',
      status: 'pending',
      queue: { current: 0, total: 0 },
      stages: { current: 0, total: 0 },
      steps: { current: 0, total: 0 },
      tiles: { current: 0, total: 0 },
    });
  });
});

describe('job texts', () => {
  const t = createTranslator('en');

  it('show progress as a percentage, the queue place while pending', () => {
    expect(progressLines(t, jobRecord('a', 'pending', { queue: { current: 1, total: 4 } }))).toEqual(['2 of 4 in the queue']);
    const lines = progressLines(t, jobRecord('a', 'running', { steps: { current: 5, total: 6 }, stages: { current: 0, total: 2 } }));
    expect(lines).toEqual(['83% done', 'Stage 1 of 2']);
  });

  it('say which attempt a job waiting after a failure runs next, and from when', () => {
    const after = new Date(Date.now() + 60_000);
    const waiting = jobRecord('a', 'pending', { queue: { current: 0, total: 2 }, retry: { attempt: 2, maxAttempts: 3, after: after.toISOString() } });
    expect(progressLines(t, waiting)).toEqual([`Attempt 2 of 3, after a failure, from ${after.toLocaleTimeString()}`, '1 of 2 in the queue']);
    const due = jobRecord('a', 'pending', { queue: { current: 0, total: 1 }, retry: { attempt: 3, maxAttempts: 3, after: '2020-01-01T00:00:00+00:00' } });
    expect(progressLines(t, due)).toEqual(['Attempt 3 of 3, after a failure', '1 of 1 in the queue']);
  });

  it('say why the last attempt ended, in words where the reason is known', () => {
    const after = new Date(Date.now() + 60_000);
    const stored = jobRecord('a', 'pending', { queue: { current: 0, total: 1 }, retry: { attempt: 2, maxAttempts: 3, after: after.toISOString(), reason: 'storage' } });
    expect(progressLines(t, stored)[0]).toBe(`Attempt 2 of 3, after a failure (the output could not be stored), from ${after.toLocaleTimeString()}`);
    const rescued = jobRecord('a', 'pending', { queue: { current: 0, total: 1 }, retry: { attempt: 2, maxAttempts: 3, reason: 'rescued' } });
    expect(progressLines(t, rescued)[0]).toBe('Attempt 2 of 3, after a failure (its worker stopped answering)');
    const odd = jobRecord('a', 'pending', { queue: { current: 0, total: 1 }, retry: { attempt: 2, maxAttempts: 3, reason: 'disk-full' } });
    expect(progressLines(t, odd)[0]).toBe('Attempt 2 of 3, after a failure (disk-full)');
  });

  it('translate known failure reasons, keep unknown ones verbatim, and carry the message', () => {
    expect(failureText(t, jobRecord('a', 'failed', { reason: 'oom', error: ' out of GPU memory ' }))).toEqual({
      reason: 'Reason: out of memory',
      hint: 'Try a smaller size or batch, or turn on tiled VAE.',
      message: 'out of GPU memory',
    });
    expect(failureText(t, jobRecord('a', 'failed', { reason: 'disk-full' }))).toEqual({ reason: 'Reason: disk-full', hint: null, message: null });
    expect(failureText(t, jobRecord('a', 'failed')).reason).toBe('The server gave no reason.');
    expect(failureText(createTranslator('de'), jobRecord('a', 'failed', { reason: 'storage' })).reason).toBe(
      'Grund: die Ausgabe konnte nicht gespeichert werden',
    );
  });
});
