/**
 * A parser of server-sent events (the `text/event-stream` format of the HTML standard), fed text
 * as it arrives. The browser's EventSource cannot send an `Authorization` header, so the GUI reads
 * the stream with `fetch()` and parses it here.
 */

/** One dispatched event: its type (`message` when unnamed), its data lines joined by `\n`, its id. */
export interface SseEvent {
  type: string;
  data: string;
  /** The last `id:` the stream sent, on this event or an earlier one ('' when none). */
  id: string;
}

export interface SseHandlers {
  onEvent: (event: SseEvent) => void;
  /** The stream's `retry:` field: how long to wait before reconnecting, in milliseconds. */
  onRetry?: (ms: number) => void;
  /** A comment line (`: heartbeat`), without its colon and one leading space. */
  onComment?: (text: string) => void;
}

/** Strip the one space the format allows after a field's colon. */
const value = (text: string) => (text.startsWith(' ') ? text.slice(1) : text);

/**
 * Lines end in CRLF, LF or CR; a chunk may end anywhere, even between the CR and LF of one line
 * ending, so a partial line waits for the next chunk and a CR at a chunk's end remembers that a
 * leading LF of the next one belongs to it. An event is dispatched at the empty line ending it; an
 * event the stream never finished is never dispatched.
 */
export class SseParser {
  private partial = '';
  private afterCr = false;
  private data: string[] = [];
  private type = '';
  private lastId = '';

  constructor(private readonly handlers: SseHandlers) {}

  /** Feed decoded text: every complete line is handled now, a trailing partial line waits. */
  push(text: string): void {
    let pos = 0;
    if (this.afterCr && text.length > 0) {
      if (text[0] === '\n') pos = 1;
      this.afterCr = false;
    }
    while (pos < text.length) {
      const end = lineEnd(text, pos);
      if (end === -1) {
        this.partial += text.slice(pos);
        return;
      }
      const line = this.partial + text.slice(pos, end);
      this.partial = '';
      if (text[end] === '\r') {
        if (end + 1 === text.length) this.afterCr = true;
        pos = text[end + 1] === '\n' ? end + 2 : end + 1;
      } else {
        pos = end + 1;
      }
      this.line(line);
    }
  }

  private line(line: string): void {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line.startsWith(':')) {
      this.handlers.onComment?.(value(line.slice(1)));
      return;
    }
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    const text = colon === -1 ? '' : value(line.slice(colon + 1));
    // A field the standard does not name is ignored, as it says.
    switch (field) {
      case 'event':
        this.type = text;
        break;
      case 'data':
        this.data.push(text);
        break;
      case 'id':
        if (!text.includes('\0')) this.lastId = text;
        break;
      case 'retry':
        if (/^\d+$/.test(text)) this.handlers.onRetry?.(Number(text));
        break;
    }
  }

  private dispatch(): void {
    const { data, type } = this;
    this.data = [];
    this.type = '';
    // A block of only `event:`/`id:`/`retry:` lines (such as the opening `retry:`) is no event.
    if (data.length === 0) return;
    this.handlers.onEvent({ type: type || 'message', data: data.join('\n'), id: this.lastId });
  }
}

/** The index of the first CR or LF at or after `from`, or -1. */
function lineEnd(text: string, from: number): number {
  const cr = text.indexOf('\r', from);
  const lf = text.indexOf('\n', from);
  if (cr === -1) return lf;
  if (lf === -1) return cr;
  return Math.min(cr, lf);
}
