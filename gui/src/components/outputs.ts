/**
 * Output images where the server wants an API key for them too (keys mode): an `<img src>` or a
 * plain link cannot send `Authorization`, so with a key set the bytes are fetched with it and
 * shown from an object URL. Without a key the server's own URL is used, cacheable as before.
 */
import { type MouseEvent, useEffect, useRef, useState } from 'react';
import { useApp } from '../context';
import { useI18n } from '../i18n';
import { useAppStore } from '../state/store';
import { describeError } from '../submit';
import { useNotices } from './Notices';

/** The file name an output is saved under: the last part of its path. */
export function outputFileName(output: string): string {
  return output.split('/').pop() || output;
}

/** Save bytes as a file, the way a download link would. */
export function saveBlob(name: string, blob: Blob): void {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function useKeyed(): boolean {
  return useAppStore((s) => s.settings.apiKey !== '');
}

/** How long a changed key must stay unchanged before the images it failed are asked for again. */
const KEY_SETTLE_MS = 400;

/**
 * Where an `<img>` finds an output: its URL, or with an API key set an object URL of its bytes.
 * An image the key could not get (a revoked key, one half typed) is asked for again when the key
 * changes; one already shown is kept.
 */
export function useOutputSrc(output: string | undefined): string | undefined {
  const { client } = useApp();
  const apiKey = useAppStore((s) => s.settings.apiKey);
  const keyed = apiKey !== '';
  const [fetched, setFetched] = useState<{ output: string; url: string } | null>(null);
  const held = useRef<{ output: string; url: string } | null>(null);
  const tried = useRef<string | undefined>(undefined);

  // The object URL lives until the output changes, the key goes, or the image leaves the page.
  useEffect(
    () => () => {
      if (held.current) URL.revokeObjectURL(held.current.url);
      held.current = null;
    },
    [output, keyed],
  );

  useEffect(() => {
    if (!keyed || !output || held.current?.output === output) return;
    let live = true;
    const load = () =>
      client.outputBlob(output).then(
        (blob) => {
          if (!live) return;
          const url = URL.createObjectURL(blob);
          held.current = { output, url };
          setFetched({ output, url });
        },
        // The card stays without its picture; the image's own failure is not worth a notice each.
        () => {},
      );
    // A try after a change of key waits until the typing stops, as the shell's key check does.
    const again = tried.current === output;
    tried.current = output;
    const timer = again ? setTimeout(load, KEY_SETTLE_MS) : undefined;
    if (!again) void load();
    return () => {
      live = false;
      if (timer !== undefined) clearTimeout(timer);
    };
    // `apiKey` is a trigger only: the client reads the key itself at each call.
  }, [client, output, keyed, apiKey]);

  if (!output) return undefined;
  if (!keyed) return client.outputUrl(output);
  return fetched?.output === output ? fetched.url : undefined;
}

/**
 * A click handler for an output's download link: the link's own URL without a key; with one,
 * the bytes are fetched with the key and saved under the output's name.
 */
export function useOutputDownload(): (output: string) => (e: MouseEvent<HTMLAnchorElement>) => void {
  const { client } = useApp();
  const { t } = useI18n();
  const keyed = useKeyed();
  const notify = useNotices((s) => s.push);
  return (output) => (e) => {
    if (!keyed) return;
    e.preventDefault();
    client.outputBlob(output).then(
      (blob) => saveBlob(outputFileName(output), blob),
      (err: unknown) => notify({ kind: 'error', text: describeError(t, err) }),
    );
  };
}

/**
 * A running job's live preview as an object URL, fetched (with the key, if any) each time the
 * status names a newer one; the previous picture stays until the next has arrived, so the card
 * never flickers empty.
 */
export function usePreviewSrc(url: string | undefined): string | undefined {
  const { client } = useApp();
  const [shown, setShown] = useState<string | undefined>(undefined);
  useEffect(() => {
    if (!url) return;
    let live = true;
    client.previewBlob(url).then(
      (blob) => {
        if (!live) return;
        const next = URL.createObjectURL(blob);
        setShown((previous) => {
          if (previous) URL.revokeObjectURL(previous);
          return next;
        });
      },
      // A preview missed (the job just finished, the network blinked): the next poll brings one.
      () => {},
    );
    return () => {
      live = false;
    };
  }, [client, url]);
  useEffect(
    () => () => {
      setShown((previous) => {
        if (previous) URL.revokeObjectURL(previous);
        return undefined;
      });
    },
    [],
  );
  return shown;
}
