// The page speaks /api/chat's events; a WebRTC call (POST v1/realtime/calls) speaks OpenAI Realtime on
// its `oai-events` data channel. These pure functions translate between the two, so the rest of the page
// does not care which transport carries the conversation. Tested in tests/js/realtime-dialect.test.mjs.

// error.code of the event a server sends before it ends a call -> the WebSocket close code /api/chat would
// have used (serve/endings.py), so describeClose() and shouldReconnect() treat both transports alike.
const ENDING_CLOSE_CODES = Object.freeze({
  server_at_capacity: 1013, server_overloaded: 1013, server_busy: 1013,
  server_draining: 1001, server_shutting_down: 1001,
  client_too_slow: 4408, access_denied: 4401,
  invalid_session: 1008, invalid_request: 1008,
  engine_error: 1011, internal_error: 1011,
});

/** The close code for a call the server ended after an `error` event with `code` (1011 when unknown). */
export function closeCodeFor(code) {
  return ENDING_CLOSE_CODES[code] ?? 1011;
}

/** One of the page's outgoing events as a Realtime client event, or null (nothing to send on a call). */
export function toRealtime(event) {
  switch (event.type) {
    case 'user.text':
      return { type: 'conversation.item.create', item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: event.text }] } };
    case 'session.update': {
      const session = { type: 'realtime' };
      if (event.text_prompt !== undefined) session.instructions = event.text_prompt;
      if (event.voice_prompt !== undefined) session.audio = { output: { voice: event.voice_prompt } };
      return { type: 'session.update', event_id: event.event_id, session };
    }
    default:
      return null; // client.ping: the call's round trip comes from RTCP (getStats)
  }
}

/**
 * One Realtime server event, for the page: {kind: 'ready', session} (the call is live), {kind: 'text', text}
 * (the assistant's words), {kind: 'event', event} (in /api/chat's terms), {kind: 'error', code, message}
 * (the server is ending the call), or null (nothing the page shows).
 */
export function fromRealtime(ev) {
  const type = String(ev.type || '');
  if (type.startsWith('bizra.')) return { kind: 'event', event: { ...ev, type: type.slice('bizra.'.length) } };
  switch (type) {
    case 'session.created': return { kind: 'ready', session: ev.session };
    case 'response.output_audio_transcript.delta': return ev.delta ? { kind: 'text', text: ev.delta } : null;
    case 'conversation.item.input_audio_transcription.completed':
      return { kind: 'event', event: { type: 'transcript.user', text: ev.transcript, source: 'speech', final: true } };
    case 'conversation.item.input_audio_transcription.failed':
      return { kind: 'event', event: { type: 'transcript.error', reason: ev.error?.message || 'transcription failed' } };
    case 'session.updated': {
      const live = ev.bizra; // a live persona/voice change: what changed, its prefill time, the request's id
      if (!live) return null;
      return { kind: 'event', event: { type: 'session.updated', event_id: live.event_id, prefill_ms: live.prefill_ms, voice: live.engine_voice } };
    }
    case 'error': {
      const error = ev.error || {};
      const param = String(error.param || '');
      if (error.event_id && param.startsWith('session.')) {
        return { kind: 'event', event: { type: 'session.update.rejected', event_id: error.event_id, reason: error.message } };
      }
      if (param.startsWith('item')) return { kind: 'event', event: { type: 'user.text.rejected', reason: error.message } };
      if (error.event_id || error.param) return { kind: 'event', event: { type: 'server.notice', reason: error.message } };
      return { kind: 'error', code: error.code, message: error.message || 'the server ended the call' };
    }
    default: return null;
  }
}
