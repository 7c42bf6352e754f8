// Server-sent events, parsed by hand.
//
// EventSource can only GET, and POST /generate/stream takes a JSON body, so the page reads the
// response body itself and parses the text/event-stream format (WHATWG HTML, "Server-sent
// events": lines end in \r\n, \n or \r; a blank line ends an event; ':' starts a comment).

export class SSEParser {
  constructor() {
    this.buffer = '';
    this.reset();
  }

  reset() {
    this.event = '';
    this.data = [];
  }

  /** Feeds a chunk of text; returns the events it completed, as {event, data} with data a string. */
  feed(text) {
    this.buffer += text;
    const events = [];
    // A trailing '\r' may be the first half of '\r\n': keep it until the next chunk says.
    let end;
    while ((end = this.lineEnd()) !== null) {
      const line = this.buffer.slice(0, end.at);
      this.buffer = this.buffer.slice(end.at + end.length);
      const event = this.line(line);
      if (event) events.push(event);
    }
    return events;
  }

  lineEnd() {
    const match = /\r\n|\n|\r(?!$)/.exec(this.buffer);
    return match ? { at: match.index, length: match[0].length } : null;
  }

  line(line) {
    if (line === '') {
      const event = this.data.length ? { event: this.event || 'message', data: this.data.join('\n') } : null;
      this.reset();
      return event;
    }
    if (line.startsWith(':')) return null; // a comment, e.g. the server's keep-alive
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.event = value;
    else if (field === 'data') this.data.push(value);
    // 'id' and 'retry' matter for EventSource's reconnection only, which a POST does not do.
    return null;
  }
}

/** Yields the events of a fetch Response's body, each as {event, data} with data parsed as JSON. */
export async function* readEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const parser = new SSEParser();
  let finished = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      // At the end, an event without its blank line is dropped, as the format says.
      const text = done ? decoder.decode() : decoder.decode(value, { stream: true });
      for (const { event, data } of parser.feed(text)) yield { event, data: JSON.parse(data) };
      if (done) {
        finished = true;
        return;
      }
    }
  } finally {
    // The consumer stopped early: closing the connection tells the server to free the rows.
    if (!finished) await reader.cancel().catch(() => {});
  }
}
