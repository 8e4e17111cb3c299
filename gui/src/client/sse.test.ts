import { describe, expect, it } from 'vitest';
import { type SseEvent, SseParser } from './sse';

/** Feed the chunks in order; collect what the parser reported. */
function parse(chunks: string[]) {
  const events: SseEvent[] = [];
  const retries: number[] = [];
  const comments: string[] = [];
  const parser = new SseParser({
    onEvent: (e) => events.push(e),
    onRetry: (ms) => retries.push(ms),
    onComment: (text) => comments.push(text),
  });
  for (const chunk of chunks) parser.push(chunk);
  return { events, retries, comments };
}

/** Every way of cutting `text` into two chunks. */
const splits = (text: string) => Array.from({ length: text.length + 1 }, (_, i) => [text.slice(0, i), text.slice(i)]);

const STREAM =
  'retry: 2000\n\n' +
  'id: 1\nevent: status\ndata: {"name":"a","status":"running"}\n\n' +
  ': heartbeat\n\n' +
  'id: 2\nevent: end\ndata: {"jobs":["a"]}\n\n';

const EXPECTED: SseEvent[] = [
  { type: 'status', data: '{"name":"a","status":"running"}', id: '1' },
  { type: 'end', data: '{"jobs":["a"]}', id: '2' },
];

describe('SseParser', () => {
  it("reads the server's stream: the retry hint, named events with ids, heartbeat comments", () => {
    expect(parse([STREAM])).toEqual({ events: EXPECTED, retries: [2000], comments: ['heartbeat'] });
  });

  it('joins multi-line data with newlines and defaults the type to message', () => {
    const { events } = parse(['data: first\ndata:second\ndata\ndata:  indented\n\n']);
    expect(events).toEqual([{ type: 'message', data: 'first\nsecond\n\n indented', id: '' }]);
  });

  it('reads CRLF and lone CR line endings as LF', () => {
    const crlf = STREAM.replaceAll('\n', '\r\n');
    const cr = STREAM.replaceAll('\n', '\r');
    expect(parse([crlf]).events).toEqual(EXPECTED);
    expect(parse([cr]).events).toEqual(EXPECTED);
    expect(parse([crlf]).comments).toEqual(['heartbeat']);
  });

  it('gives the same events wherever a chunk ends, mid-line or between CR and LF', () => {
    for (const text of [STREAM, STREAM.replaceAll('\n', '\r\n')]) {
      for (const chunks of splits(text)) expect(parse(chunks).events).toEqual(EXPECTED);
    }
    const oneByOne = parse([...STREAM.replaceAll('\n', '\r\n')]);
    expect(oneByOne).toEqual({ events: EXPECTED, retries: [2000], comments: ['heartbeat'] });
  });

  it('does not read a CR at the end of a chunk followed by an empty chunk as two line ends', () => {
    expect(parse(['event: e\r', '', '\ndata: x\n\n']).events).toEqual([{ type: 'e', data: 'x', id: '' }]);
  });

  it('never dispatches an unfinished event, nor a block without data', () => {
    expect(parse(['event: status\nid: 7\n\n']).events).toEqual([]);
    expect(parse(['event: status\ndata: {"name":"a"}\n']).events).toEqual([]);
  });

  it('keeps the last id for later events, ignores unknown fields and a retry that is not a number', () => {
    const { events, retries } = parse(['id: 5\ndata: a\n\nfoo: bar\nretry: soon\ndata: b\n\n']);
    expect(events.map((e) => [e.data, e.id])).toEqual([
      ['a', '5'],
      ['b', '5'],
    ]);
    expect(retries).toEqual([]);
  });

  it('resets the event type after each event', () => {
    const { events } = parse(['event: status\ndata: 1\n\ndata: 2\n\n']);
    expect(events.map((e) => e.type)).toEqual(['status', 'message']);
  });
});
