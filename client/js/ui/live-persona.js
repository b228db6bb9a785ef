// Live persona and voice changes on /api/chat: while connected, an edited persona (the Apply button) or
// another voice (on change) goes to the server as a `session.update` 0x04 event; the server re-prefills
// the session's slot on the new prompt plus the recent conversation without dropping the audio streams,
// and answers `session.updated` (what changed, prefill ms) or `session.update.rejected` (why; the session
// keeps its old persona and voice). No reconnect. The pure functions are tested in tests/js/.

/** The session.update event that makes `wanted` ({persona, voice}) live, or {error} / null (nothing to do). */
export function promptUpdate(wanted, applied, eventId) {
  const event = { type: 'session.update', event_id: eventId };
  const persona = (wanted.persona ?? '').trim();
  if (wanted.persona !== undefined && persona !== applied.persona) {
    if (!persona) return { error: 'The persona is empty: describe who BIZRA should be.' };
    event.text_prompt = persona;
  }
  if (wanted.voice !== undefined && wanted.voice && wanted.voice !== applied.voice) event.voice_prompt = wanted.voice;
  return 'text_prompt' in event || 'voice_prompt' in event ? event : null;
}

/** The sentence that tells the user how the server answered `request` (the event we sent). */
export function describeAnswer(answer, request) {
  const what = [request.text_prompt !== undefined && 'persona', request.voice_prompt !== undefined && 'voice']
    .filter(Boolean).join(' and ');
  if (answer.type === 'session.updated') {
    const ms = Number(answer.prefill_ms);
    const took = Number.isFinite(ms) ? ` in ${Math.round(ms)} ms` : '';
    const voice = request.voice_prompt !== undefined && answer.voice ? ` (voice ${answer.voice})` : '';
    return { ok: true, text: `${capitalize(what)} updated live${took}${voice}, no reconnect.` };
  }
  return { ok: false, text: `${capitalize(what)} not changed: ${answer.reason || 'the server refused it'}` };
}

const capitalize = (s) => s.charAt(0).toUpperCase() + s.slice(1);

/** The persona box, the voice picker, an Apply button and a status line, for one connection at a time. */
export class LivePersona {
  /** @param {{persona, voice, apply, status}} el DOM elements (anything with value/disabled/hidden/textContent) */
  constructor(el) {
    this.el = el;
    this.send = null; // (event) => boolean while a session is live
    this.applied = null; // {persona, voice} the server has now
    this.pending = new Map(); // event_id -> the request, until answered
    this.count = 0;
    el.apply.addEventListener('click', () => this.applyPersona());
    el.persona.addEventListener('input', () => this.refresh());
    el.voice.addEventListener('change', () => { if (this.send) this.request({ voice: el.voice.value }); });
    this.refresh();
  }

  /** The session is live with what the fields say now (they were locked while it opened). */
  attach(send) {
    this.send = send;
    this.applied = { persona: this.el.persona.value.trim(), voice: this.el.voice.value };
    this.pending.clear();
    this.show('', '');
    this.refresh();
  }

  detach() {
    this.send = null;
    this.pending.clear();
    this.refresh();
  }

  applyPersona() {
    if (this.send) this.request({ persona: this.el.persona.value });
  }

  request(wanted) {
    const update = promptUpdate(wanted, this.applied, `live-${++this.count}`);
    if (update === null) return;
    if (update.error) { this.show(update.error, 'rejected'); return; }
    if (!this.send(update)) { this.show('Not connected: the change was not sent.', 'rejected'); return; }
    this.pending.set(update.event_id, update);
    this.show('Applying…', 'pending');
    this.refresh();
  }

  /** A server event; true when it answered one of our updates. */
  onServerEvent(ev) {
    if (ev.type !== 'session.updated' && ev.type !== 'session.update.rejected') return false;
    const request = this.pending.get(ev.event_id);
    if (!request) return false;
    this.pending.delete(ev.event_id);
    const { ok, text } = describeAnswer(ev, request);
    if (ok) {
      if (request.text_prompt !== undefined) this.applied.persona = request.text_prompt;
      if (request.voice_prompt !== undefined) this.applied.voice = request.voice_prompt;
    } else if (request.voice_prompt !== undefined && !this.pendingVoice()) {
      this.el.voice.value = this.applied.voice; // the picker shows the voice the session still has
    }
    this.show(text, ok ? 'applied' : 'rejected');
    this.refresh();
    return true;
  }

  pendingVoice() {
    return [...this.pending.values()].some((r) => r.voice_prompt !== undefined);
  }

  refresh() {
    const live = Boolean(this.send);
    this.el.apply.hidden = !live;
    const edited = live && this.el.persona.value.trim() !== this.applied.persona;
    const busy = [...this.pending.values()].some((r) => r.text_prompt !== undefined);
    this.el.apply.disabled = !edited || busy;
  }

  show(text, state) {
    this.el.status.textContent = text;
    this.el.status.dataset.state = state;
    if (state === 'applied') this.el.status.dataset.applied = String(Number(this.el.status.dataset.applied || 0) + 1);
  }
}
