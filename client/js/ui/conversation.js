// The conversation log: a growing assistant bubble for the monologue text, and separate entries
// for what the user said or typed, router decisions, knowledge answers and the knowledge model's
// tool calls (from 0x04 events).

export class ConversationLog {
  constructor(el) {
    this.el = el;
    this.assistant = null; // the bubble the next text piece appends to
    this.knowledge = new Map(); // turn → entry
    this.tools = new Map(); // `${turn}:${call}` → entry
    this.textChars = 0;
  }

  clear() {
    this.el.replaceChildren();
    this.assistant = null;
    this.knowledge.clear();
    this.tools.clear();
    this.textChars = 0;
  }

  entry(kind, who, text) {
    const div = document.createElement('div');
    div.className = `entry ${kind}`;
    div.dir = 'auto';
    if (who) {
      const label = document.createElement('span');
      label.className = 'who';
      label.textContent = who;
      div.append(label);
    }
    const body = document.createElement('span');
    body.className = 'text';
    body.textContent = text;
    div.append(body);
    this.el.querySelector('.empty')?.remove();
    this.el.append(div);
    this.scroll();
    return body;
  }

  scroll() {
    // Follow new text only if the reader is already at the bottom (don't yank them while reading).
    const nearBottom = this.el.scrollHeight - this.el.scrollTop - this.el.clientHeight < 80;
    if (nearBottom) this.el.scrollTop = this.el.scrollHeight;
  }

  /** A piece of the assistant's inner monologue, appended verbatim. */
  assistantText(piece) {
    if (!this.assistant) this.assistant = this.entry('assistant', 'BIZRA', '');
    this.assistant.textContent += piece;
    this.textChars += piece.length;
    this.scroll();
  }

  user(text, { typed = false } = {}) {
    this.entry('user', typed ? 'You (typed)' : 'You', text);
    this.assistant = null; // BIZRA's reply starts a new bubble
  }

  router({ mode, reason }) {
    this.entry('router', '', `Routed to ${mode}${reason ? ` — ${reason}` : ''}`);
  }

  /** A knowledge answer (0x04 `knowledge.answer`): `delta` pieces stream in; the final event's `text` is the
   *  whole answer and replaces them. One bubble per `turn_id`. */
  knowledgeAnswer({ turn_id: turn, delta = '', text, done }) {
    let body = this.knowledge.get(turn);
    if (!body) {
      body = this.entry('knowledge', 'Knowledge', '');
      this.knowledge.set(turn, body);
      this.assistant = null;
    }
    if (done && typeof text === 'string' && text) body.textContent = text;
    else body.textContent += delta;
    if (done) body.parentElement.dataset.done = 'true';
    this.scroll();
  }

  /** A server-side tool call of the knowledge model (0x04 `tool.call`, then its `tool.result`): one line
   *  per call, "Tool name(arguments) …" until the result completes it with what came back (or the error)
   *  and how long it took. `data-ok` is set once the result is in. */
  tool({ type, turn_id: turn, call_id: call, name, arguments: args, ok, result, error, ms }) {
    const key = `${turn}:${call}`;
    let body = this.tools.get(key);
    if (!body) {
      body = this.entry('router tool', '', '');
      this.tools.set(key, body);
    }
    if (type === 'tool.call') {
      body.dataset.call = `${name}(${typeof args === 'string' ? args : JSON.stringify(args ?? {})})`;
      body.textContent = `Tool ${body.dataset.call} …`;
    } else {
      const took = typeof ms === 'number' ? ` · ${Math.round(ms)} ms` : '';
      const what = body.dataset.call ?? `${name}()`;
      body.textContent = ok ? `Tool ${what} → ${result ?? ''}${took}` : `Tool ${what} failed: ${error}${took}`;
      body.parentElement.dataset.ok = ok ? 'true' : 'false';
    }
    this.scroll();
  }

  note(text) {
    this.entry('router', '', text);
  }
}
