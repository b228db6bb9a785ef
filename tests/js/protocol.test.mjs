import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Kind, encodeMessage, encodeAudio, encodeMetadata, decodeMessage, isHandshake, buildChatUrl,
  voicePromptParam, describeClose,
} from '../../client/js/core/protocol.js';

test('kind bytes match the moshi protocol', () => {
  assert.deepEqual({ ...Kind }, { HANDSHAKE: 0, AUDIO: 1, TEXT: 2, CONTROL: 3, METADATA: 4, ERROR: 5, PING: 6 });
});

test('audio message is 0x01 followed by the Ogg bytes verbatim', () => {
  const msg = encodeAudio(new Uint8Array([0x4f, 0x67, 0x67, 0x53]));
  assert.deepEqual([...msg], [1, 0x4f, 0x67, 0x67, 0x53]);
});

test('metadata round-trips JSON with non-ASCII text', () => {
  const msg = encodeMetadata({ type: 'user.text', text: 'ما هو الإحسان؟' });
  assert.equal(msg[0], 4);
  const back = decodeMessage(msg.buffer);
  assert.equal(back.name, 'metadata');
  assert.deepEqual(back.json, { type: 'user.text', text: 'ما هو الإحسان؟' });
});

test('text and error payloads decode as UTF-8', () => {
  const piece = new TextEncoder().encode(' héllo');
  assert.equal(decodeMessage(encodeMessage(Kind.TEXT, piece)).text, ' héllo');
  assert.equal(decodeMessage(encodeMessage(Kind.ERROR, new TextEncoder().encode('bad voice'))).text, 'bad voice');
});

test('malformed metadata is kept raw instead of throwing', () => {
  const m = decodeMessage(encodeMessage(Kind.METADATA, new TextEncoder().encode('{nope')));
  assert.equal(m.json, null);
  assert.equal(m.raw, '{nope');
});

test('unknown kinds and empty messages are rejected', () => {
  assert.throws(() => decodeMessage(new Uint8Array([0x09])), /unknown message kind 0x09/);
  assert.throws(() => decodeMessage(new Uint8Array([])), /empty/);
});

test('handshake is exactly one zero byte', () => {
  assert.ok(isHandshake(new Uint8Array([0])));
  assert.ok(!isHandshake(new Uint8Array([0, 0])));
  assert.ok(!isHandshake(new Uint8Array([1])));
});

test('chat URL follows the page scheme, host and path prefix', () => {
  const url = buildChatUrl('https://voice.example:8443/bizra/?token=abc#x', {
    text_prompt: 'You are BIZRA — الإحسان', voice_prompt: 'NATM1.pt', mode: 'auto', seed: '', token: undefined,
    record: 0,
  });
  const u = new URL(url);
  assert.equal(u.protocol, 'wss:');
  assert.equal(u.host, 'voice.example:8443');
  assert.equal(u.pathname, '/bizra/api/chat');
  assert.equal(u.searchParams.get('text_prompt'), 'You are BIZRA — الإحسان');
  assert.equal(u.searchParams.get('voice_prompt'), 'NATM1.pt');
  assert.equal(u.searchParams.get('record'), '0');
  assert.ok(!u.searchParams.has('seed') && !u.searchParams.has('token'));
  assert.equal(new URL(buildChatUrl('http://localhost:8000/', {})).protocol, 'ws:');
});

test('voice names are sent like PersonaPlex clients send them', () => {
  assert.equal(voicePromptParam('NATM1'), 'NATM1.pt');
  assert.equal(voicePromptParam('NATM1.pt'), 'NATM1.pt');
  assert.equal(voicePromptParam('custom.wav'), 'custom.wav');
  assert.equal(voicePromptParam(''), '');
});

test('close codes become sentences a person can act on', () => {
  assert.match(describeClose(1013, ''), /capacity/);
  assert.match(describeClose(4401, ''), /token/);
  assert.match(describeClose(1008, 'text_prompt is empty'), /text_prompt is empty/);
  assert.match(describeClose(1011, ''), /Server error/);
  assert.equal(describeClose(1000, ''), null);
});

test('a live session lost with its replica reconnects, a few times at most', async () => {
  const { shouldReconnect, MAX_RECONNECTS } = await import('../../client/js/core/protocol.js');
  for (const code of [1001, 1006, 1012]) assert.equal(shouldReconnect(code, true, 0), true);
  assert.equal(shouldReconnect(1006, false, 0), false); // never connected: say so instead
  assert.equal(shouldReconnect(1013, true, 0), false); // at capacity: retrying at once would not help
  assert.equal(shouldReconnect(1008, true, 0), false);
  assert.equal(shouldReconnect(1000, true, 0), false);
  assert.equal(shouldReconnect(1006, true, MAX_RECONNECTS), false);
});

test('replica restarts and access refusals are explained', () => {
  assert.match(describeClose(1012, 'draining'), /restarting this replica: draining/);
  assert.match(describeClose(4403, ''), /origin is not allowed/);
});
