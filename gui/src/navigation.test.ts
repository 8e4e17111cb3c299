import { describe, expect, it } from 'vitest';
import { shownTab, visibleTabs } from './navigation';

describe('tabs', () => {
  it('offer Jobs only where the server lists jobs', () => {
    expect(visibleTabs(true)).toContain('jobs');
    expect(visibleTabs(false)).not.toContain('jobs');
    expect(visibleTabs(false)).toEqual(['txt2img', 'img2img', 'inpaint', 'upscale', 'blend', 'models', 'settings']);
  });

  it('fall back to txt2img for #jobs on a server without the listing', () => {
    expect(shownTab('jobs', false)).toBe('txt2img');
    expect(shownTab('jobs', true)).toBe('jobs');
    expect(shownTab('settings', false)).toBe('settings');
  });
});
