import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Resampler } from '../../client/js/core/resampler.js';
import { Framer } from '../../client/js/core/framer.js';
import { EnergyVad, frameDbfs } from '../../client/js/core/vad.js';

const sine = (freq, rate, n, phase = 0) => Float32Array.from({ length: n }, (_, i) => Math.sin(2 * Math.PI * freq * (i / rate) + phase));

function rms(a, from = 0, to = a.length) {
  let s = 0;
  for (let i = from; i < to; i++) s += a[i] * a[i];
  return Math.sqrt(s / (to - from));
}

for (const [inRate, outRate] of [[48000, 24000], [44100, 24000], [24000, 48000], [24000, 44100]]) {
  test(`resampler ${inRate} → ${outRate} reproduces a 1 kHz tone sample-accurately`, () => {
    const r = new Resampler(inRate, outRate);
    const out = r.process(sine(1000, inRate, inRate)); // 1 s
    const expected = sine(1000, outRate, out.length);
    // The last halfTaps input samples wait for look-ahead, so a few outputs are still pending.
    assert.ok(out.length <= outRate && outRate - out.length <= 40, `length ${out.length}`);
    let maxErr = 0;
    for (let i = 100; i < out.length - 100; i++) maxErr = Math.max(maxErr, Math.abs(out[i] - expected[i]));
    assert.ok(maxErr < 0.01, `max error ${maxErr}`);
  });
}

test('resampler output does not depend on how the input is chunked', () => {
  const input = sine(440, 48000, 9600);
  const whole = new Resampler(48000, 24000).process(input);
  const r = new Resampler(48000, 24000);
  const parts = [];
  for (let i = 0, n = 1; i < input.length; i += n, n = (n * 7) % 300 + 1) parts.push(...r.process(input.subarray(i, i + n)));
  assert.equal(parts.length, whole.length);
  for (let i = 0; i < whole.length; i++) assert.ok(Math.abs(parts[i] - whole[i]) < 1e-6);
});

test('resampler 48k → 24k suppresses tones above the new Nyquist (anti-aliasing)', () => {
  const out = new Resampler(48000, 24000).process(sine(15000, 48000, 48000));
  assert.ok(rms(out, 200, out.length - 200) < 0.01, `alias rms ${rms(out, 200, out.length - 200)}`);
  const pass = new Resampler(48000, 24000).process(sine(8000, 48000, 48000));
  assert.ok(Math.abs(rms(pass, 200, pass.length - 200) - Math.SQRT1_2) < 0.03, 'passband keeps its level');
});

test('framer emits exact 1920-sample frames across uneven pushes', () => {
  const f = new Framer(1920);
  const input = Float32Array.from({ length: 1920 * 3 + 5 }, (_, i) => i);
  const frames = [];
  for (let i = 0; i < input.length; i += 128) frames.push(...f.push(input.subarray(i, i + 128)));
  assert.equal(frames.length, 3);
  assert.ok(frames.every((fr) => fr.length === 1920));
  assert.equal(frames[1][0], 1920);
  assert.equal(frames[2][1919], 1920 * 3 - 1);
  assert.notStrictEqual(frames[0].buffer, frames[1].buffer, 'frames are independent (transferable)');
});

test('VAD fires one onset when speech starts over a noise floor, then releases after hangover', () => {
  const vad = new EnergyVad({ hangoverFrames: 2 });
  const noise = Float32Array.from({ length: 1920 }, (_, i) => 0.003 * Math.sin(i * 1.3));
  const speech = sine(300, 24000, 1920).map((v) => v * 0.2);
  const results = [];
  for (let i = 0; i < 10; i++) results.push(vad.process(noise));
  assert.ok(results.every((r) => !r.speaking && !r.onset));
  const s = [vad.process(speech), vad.process(speech), vad.process(speech)];
  assert.deepEqual(s.map((r) => r.onset), [true, false, false]);
  assert.ok(s.every((r) => r.speaking));
  const after = [1, 2, 3].map(() => vad.process(noise));
  assert.deepEqual(after.map((r) => r.speaking), [true, true, false]);
  assert.ok(Math.abs(frameDbfs(speech) - -16.99) < 0.1);
});

test('VAD ignores steady loud background once the floor has adapted', () => {
  const vad = new EnergyVad();
  const hum = sine(100, 24000, 1920).map((v) => v * 0.05); // -29 dBFS constant hum
  let onsets = 0;
  for (let i = 0; i < 400; i++) onsets += vad.process(hum).onset ? 1 : 0;
  vad.process(hum);
  assert.ok(!vad.process(hum).speaking, 'hum is not speech after adaptation');
  assert.ok(onsets <= 1);
});
