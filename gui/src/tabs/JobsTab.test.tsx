import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiError, type JobsQuery } from '../client/api';
import type { JobPage } from '../client/types';
import { allByTestId, byTestId, change, click, fakeClient, jobRecord, type Rendered, render, settle } from '../test/render';
import { appendPage, JOBS_PAGE_SIZE, JobsTab } from './JobsTab';

let view: Rendered | null = null;
afterEach(() => {
  view?.unmount();
  view = null;
});

const pages: Record<string, JobPage> = {
  first: {
    jobs: [
      jobRecord('job-3', 'running', { steps: { current: 2, total: 8 } }),
      jobRecord('job-2', 'success', { outputs: ['job-2_0.png'], thumbnails: ['job-2_0.thumb.jpg'], metadata: [{ params: { prompt: 'a fox' } }] }),
    ],
    next: 'c2',
  },
  second: { jobs: [jobRecord('job-1', 'failed', { reason: 'storage', error: 'The object store refused the upload.' })], next: null },
};

function listing() {
  const calls: JobsQuery[] = [];
  const jobs = vi.fn(async (query: JobsQuery = {}) => {
    calls.push(query);
    if (query.status === 'failed') return { jobs: pages.second.jobs, next: null };
    return query.cursor === 'c2' ? pages.second : pages.first;
  });
  return { calls, client: fakeClient({ jobs }) };
}

describe('the Jobs view', () => {
  it("lists the caller's jobs a page at a time, with status, progress, failure and outputs", async () => {
    const { calls, client } = listing();
    view = await render(<JobsTab />, { client });
    await settle();
    expect(calls[0]).toEqual({ status: undefined, limit: JOBS_PAGE_SIZE, cursor: null });
    const rows = () => allByTestId(view!.container, 'job-row');
    expect(rows().map((r) => [r.getAttribute('data-name'), r.getAttribute('data-status')])).toEqual([
      ['job-3', 'running'],
      ['job-2', 'success'],
    ]);
    expect(rows()[0].textContent).toContain('25% done');
    expect(rows()[0].textContent).toContain('Running');
    const thumb = rows()[1].querySelector('img') as HTMLImageElement;
    expect(thumb.getAttribute('src')).toBe('http://h/output/job-2_0.thumb.jpg');
    expect(byTestId(rows()[1], 'job-output')?.getAttribute('href')).toBe('http://h/output/job-2_0.png');

    await click(byTestId(view.container, 'jobs-more'));
    await settle();
    expect(calls[1]).toMatchObject({ cursor: 'c2' });
    expect(rows().map((r) => r.getAttribute('data-name'))).toEqual(['job-3', 'job-2', 'job-1']);
    expect(rows()[2].textContent).toContain('Reason: the output could not be stored');
    expect(rows()[2].textContent).toContain('The object store refused the upload.');
    expect(byTestId(view.container, 'jobs-more')).toBeNull();
  });

  it('filters by status and opens a finished image in the viewer', async () => {
    const { calls, client } = listing();
    view = await render(<JobsTab />, { client });
    await settle();
    await click(view.container.querySelector('button.thumb'));
    expect((byTestId(document.body, 'lightbox-image') as HTMLImageElement).getAttribute('src')).toBe('http://h/output/job-2_0.png');
    await click(byTestId(document.body, 'lightbox-close'));

    await change(byTestId(view.container, 'jobs-filter'), 'failed');
    await settle();
    expect(calls.at(-1)).toMatchObject({ status: 'failed', cursor: null });
    expect(allByTestId(view.container, 'job-row').map((r) => r.getAttribute('data-name'))).toEqual(['job-1']);
  });

  it('says so when the server has no listing, and points to Settings when the key is refused', async () => {
    view = await render(<JobsTab />, { client: fakeClient({ jobs: async () => null }) });
    await settle();
    expect(view.container.textContent).toContain('This server does not list jobs.');
    view.unmount();

    const refused = fakeClient({ jobs: async () => Promise.reject(new ApiError('http', 403, 'this API key was revoked')) });
    view = await render(<JobsTab />, { client: refused });
    await settle();
    expect(byTestId(view.container, 'jobs-error')?.textContent).toContain('this API key was revoked');
    expect(byTestId(view.container, 'api-key-link')).not.toBeNull();
  });

  it('never lists a job twice when pages overlap', () => {
    const a = jobRecord('a', 'success');
    const b = jobRecord('b', 'success');
    expect(appendPage([a, b], [b, jobRecord('c', 'failed')]).map((r) => r.name)).toEqual(['a', 'b', 'c']);
  });
});
