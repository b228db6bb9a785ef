import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  nameProblem, fileProblem, encodeWav, uploadVoice, deleteVoice, fetchVoices, fillVoiceSelect, DEFAULT_LIMITS,
} from '../../client/js/ui/voice-upload.js';

test('names follow the server allow-list and never clash with a listed voice in any case', () => {
  assert.equal(nameProblem('Grandma_2', ['NATM1']), null);
  for (const bad of ['', '  ', '../x', 'a b', '-x', 'x.pt', 'a'.repeat(65), 'ümlaut']) {
    assert.match(nameProblem(bad, []), /name/, bad);
  }
  assert.equal(nameProblem('natm1', ['NATM1']), 'A voice named NATM1 exists already; choose another name.');
});

test('files the server would refuse are refused before sending', () => {
  assert.equal(fileProblem({ name: 'me.wav', size: 1000, type: 'audio/wav' }), null);
  assert.equal(fileProblem({ name: 'me.opus', size: 1000, type: '' }), null);
  assert.equal(fileProblem({ name: 'take', size: 1000, type: 'audio/flac' }), null);
  assert.equal(fileProblem({ name: 'me.mp3', size: 1000, type: 'audio/mpeg' }), 'Choose a WAV, FLAC or Ogg-Opus file.');
  assert.equal(fileProblem({ name: 'me.wav', size: 3 << 20, type: 'audio/wav' }, { ...DEFAULT_LIMITS, max_bytes: 2 << 20 }),
    'The file is larger than 2 MiB.');
  assert.equal(fileProblem(null), 'Record or choose a recording first.');
});

test('a recording is sent as a 16-bit mono 24 kHz WAV', () => {
  const samples = Float32Array.from([0, 0.5, -0.5, 1, -1, 2]);
  const wav = encodeWav(samples, 24000);
  const view = new DataView(wav.buffer);
  const text = (at, n) => String.fromCharCode(...wav.subarray(at, at + n));
  assert.equal(text(0, 4), 'RIFF');
  assert.equal(text(8, 8), 'WAVEfmt ');
  assert.equal(view.getUint32(4, true), wav.length - 8);
  assert.equal(view.getUint16(20, true), 1); // PCM
  assert.equal(view.getUint16(22, true), 1); // mono
  assert.equal(view.getUint32(24, true), 24000);
  assert.equal(view.getUint32(28, true), 48000); // byte rate
  assert.equal(view.getUint16(34, true), 16);
  assert.equal(text(36, 4), 'data');
  assert.equal(view.getUint32(40, true), samples.length * 2);
  const pcm = [...Array(samples.length).keys()].map((i) => view.getInt16(44 + 2 * i, true));
  assert.deepEqual(pcm, [0, 16384, -16384, 32767, -32768, 32767]); // clipped, not wrapped
});

function fakeFetch(status, json) {
  const calls = [];
  const fetchImpl = async (url, init = {}) => {
    calls.push({ url, ...init });
    return { ok: status >= 200 && status < 300, status, json: async () => json };
  };
  return { fetchImpl, calls };
}

test('an upload posts the raw recording with its name in the query and the token as a bearer header', async () => {
  const { fetchImpl, calls } = fakeFetch(201, { name: 'Grand-ma', kind: 'custom', seconds: 4.2 });
  const body = new Uint8Array([1, 2, 3]);
  const result = await uploadVoice({ fetchImpl, token: 's3cret', name: 'Grand-ma', body, contentType: 'audio/wav' });
  assert.deepEqual(result, { ok: true, voice: { name: 'Grand-ma', kind: 'custom', seconds: 4.2 } });
  assert.equal(calls[0].url, 'api/voices?name=Grand-ma');
  assert.equal(calls[0].method, 'POST');
  assert.equal(calls[0].body, body);
  assert.deepEqual(calls[0].headers, { 'Content-Type': 'audio/wav', Authorization: 'Bearer s3cret' });
});

test("the server's refusal is what the user reads", async () => {
  const { fetchImpl } = fakeFetch(422, { error: 'The recording is silent.' });
  assert.deepEqual(await uploadVoice({ fetchImpl, name: 'x', body: new Uint8Array(4) }),
    { ok: false, error: 'The recording is silent.' });
  const off = fakeFetch(403, { error: 'Voice uploads are off on this server.' });
  assert.deepEqual(await deleteVoice({ fetchImpl: off.fetchImpl, name: 'a/b' }),
    { ok: false, error: 'Voice uploads are off on this server.' });
  assert.equal(off.calls[0].url, 'api/voices/a%2Fb');
  assert.equal(off.calls[0].method, 'DELETE');
  assert.deepEqual(off.calls[0].headers, {}); // no token configured: none sent
});

test('the listing is fetched with the token, and a server without it gives null', async () => {
  const { fetchImpl, calls } = fakeFetch(200, { voices: [], default: 'NATM1', uploads: { enabled: false } });
  assert.deepEqual((await fetchVoices({ fetchImpl, token: 't' })).uploads, { enabled: false });
  assert.deepEqual(calls[0].headers, { Authorization: 'Bearer t' });
  assert.equal(await fetchVoices({ fetchImpl: fakeFetch(404, {}).fetchImpl }), null);
});

test('the voice list marks custom voices and keeps the chosen one selected', () => {
  const doc = { createElement: () => ({ dataset: {}, value: '', textContent: '', selected: false }) };
  const select = { ownerDocument: doc, options: [], replaceChildren(...opts) { this.options = opts; } };
  const voices = [{ name: 'NATF0', kind: 'preset' }, { name: 'NATM1', kind: 'preset' }, { name: 'Grandma', kind: 'custom' }];
  fillVoiceSelect(select, voices, 'NATM1', 'Grandma');
  assert.deepEqual(select.options.map((o) => [o.value, o.textContent, o.dataset.kind, o.selected]), [
    ['NATF0', 'NATF0', 'preset', false], ['NATM1', 'NATM1', 'preset', false], ['Grandma', 'Grandma (custom)', 'custom', true],
  ]);
  fillVoiceSelect(select, voices.slice(0, 2), 'NATM1', 'Grandma'); // deleted: back to the default
  assert.deepEqual(select.options.map((o) => o.selected), [false, true]);
});
