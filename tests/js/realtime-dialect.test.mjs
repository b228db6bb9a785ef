import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeCodeFor, fromRealtime, toRealtime } from '../../client/js/core/realtime-dialect.js';

test("the page's events become Realtime client events", () => {
  assert.deepEqual(toRealtime({ type: 'user.text', text: 'Hi' }), {
    type: 'conversation.item.create', item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'Hi' }] },
  });
  assert.deepEqual(toRealtime({ type: 'session.update', event_id: 'u1', text_prompt: 'A baker.', voice_prompt: 'NATF1' }), {
    type: 'session.update', event_id: 'u1', session: { type: 'realtime', instructions: 'A baker.', audio: { output: { voice: 'NATF1' } } },
  });
  assert.deepEqual(toRealtime({ type: 'session.update', event_id: 'u2', voice_prompt: 'NATF1' }).session,
    { type: 'realtime', audio: { output: { voice: 'NATF1' } } });
  assert.equal(toRealtime({ type: 'client.ping', t: 1 }), null);
});

test("Realtime server events become the page's", () => {
  assert.deepEqual(fromRealtime({ type: 'session.created', session: { id: 's' } }), { kind: 'ready', session: { id: 's' } });
  assert.deepEqual(fromRealtime({ type: 'response.output_audio_transcript.delta', delta: ' hi' }), { kind: 'text', text: ' hi' });
  assert.equal(fromRealtime({ type: 'response.output_audio_transcript.delta', delta: '' }), null);
  assert.deepEqual(fromRealtime({ type: 'bizra.knowledge.answer', turn_id: 1, delta: 'Paris', done: false }),
    { kind: 'event', event: { type: 'knowledge.answer', turn_id: 1, delta: 'Paris', done: false } });
  assert.deepEqual(fromRealtime({ type: 'conversation.item.input_audio_transcription.completed', transcript: 'hello' }).event,
    { type: 'transcript.user', text: 'hello', source: 'speech', final: true });
  assert.deepEqual(fromRealtime({ type: 'session.updated', session: {}, bizra: { event_id: 'u1', prefill_ms: 21.5, engine_voice: 'NATF1' } }).event,
    { type: 'session.updated', event_id: 'u1', prefill_ms: 21.5, voice: 'NATF1' });
  assert.equal(fromRealtime({ type: 'session.updated', session: {} }), null); // not an answer to a live change
  assert.equal(fromRealtime({ type: 'response.output_audio.delta', delta: 'AAAA' }), null);
});

test('errors: a refused change or message is an event, the end of the call is an error with its close code', () => {
  assert.deepEqual(fromRealtime({ type: 'error', error: { code: 'invalid_value', param: 'session.audio.output.voice', event_id: 'u3', message: 'No voice NOPE' } }).event,
    { type: 'session.update.rejected', event_id: 'u3', reason: 'No voice NOPE' });
  assert.deepEqual(fromRealtime({ type: 'error', error: { code: 'invalid_value', param: 'item.content', message: 'at most 2000 characters' } }).event,
    { type: 'user.text.rejected', reason: 'at most 2000 characters' });
  assert.equal(fromRealtime({ type: 'error', error: { code: 'input_audio_buffer_full', param: 'audio', message: 'x' } }).event.type, 'server.notice');
  assert.deepEqual(fromRealtime({ type: 'error', error: { code: 'server_draining', message: 'This replica is draining' } }),
    { kind: 'error', code: 'server_draining', message: 'This replica is draining' });
  assert.equal(closeCodeFor('server_draining'), 1001);
  assert.equal(closeCodeFor('server_at_capacity'), 1013);
  assert.equal(closeCodeFor('client_too_slow'), 4408);
  assert.equal(closeCodeFor('something_new'), 1011);
});
