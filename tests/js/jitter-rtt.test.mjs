import { test } from 'node:test';
import assert from 'node:assert/strict';
import { JitterBuffer } from '../../client/js/core/jitter-buffer.js';
import { RttMeter } from '../../client/js/core/rtt.js';

const RATE = 1000; // 1 sample per ms keeps the arithmetic readable
const ones = (n) => new Float32Array(n).fill(1);
const pull = (jb, n) => jb.pull(new Float32Array(n));

test('plays nothing until the target latency is buffered, then fades in', () => {
  const jb = new JitterBuffer({ sampleRate: RATE, targetMs: 100, maxMs: 300, fadeMs: 4 });
  jb.push(ones(60));
  assert.deepEqual([...pull(jb, 10)], new Array(10).fill(0));
  assert.equal(jb.bufferedSamples, 60);
  jb.push(ones(40));
  const out = pull(jb, 10);
  assert.deepEqual([...out.subarray(0, 5)], [0.25, 0.5, 0.75, 1, 1]);
  assert.equal(jb.bufferedSamples, 90);
});

test('underrun fades the last samples to zero and rebuffers to the target', () => {
  const jb = new JitterBuffer({ sampleRate: RATE, targetMs: 20, maxMs: 100, fadeMs: 4 });
  jb.push(ones(26));
  pull(jb, 20);
  const out = pull(jb, 10); // only 6 left
  assert.deepEqual([...out], [1, 1, 0.75, 0.5, 0.25, 0, 0, 0, 0, 0]);
  assert.equal(jb.stats.underruns, 1);
  jb.push(ones(10));
  assert.ok(pull(jb, 5).every((v) => v === 0), 'waits for the target again');
});

test('drops the oldest audio when over the max latency, keeping the newest at the target', () => {
  const jb = new JitterBuffer({ sampleRate: RATE, targetMs: 50, maxMs: 100, fadeMs: 1 });
  const ramp = Float32Array.from({ length: 120 }, (_, i) => i);
  jb.push(ramp);
  assert.equal(jb.bufferedSamples, 50);
  assert.equal(jb.stats.droppedSamples, 70);
  const out = pull(jb, 50);
  assert.equal(out[1], 71);
  assert.equal(out[49], 119);
});

test('flush empties the buffer at once, leaving only a short fade to silence', () => {
  const jb = new JitterBuffer({ sampleRate: RATE, targetMs: 20, maxMs: 1000, fadeMs: 4 });
  jb.push(ones(500));
  pull(jb, 10);
  jb.flush();
  assert.equal(jb.bufferedSamples, 0);
  assert.equal(jb.bufferedMs, 0);
  const out = pull(jb, 8);
  assert.deepEqual([...out], [0.75, 0.5, 0.25, 0, 0, 0, 0, 0]);
  assert.equal(jb.stats.flushes, 1);
  assert.equal(jb.stats.underruns, 0, 'a flush is not an underrun');
  jb.push(ones(10));
  assert.ok(pull(jb, 5).every((v) => v === 0), 'new audio after barge-in waits for the target');
});

test('wraps around the ring and grows for bursts larger than its capacity', () => {
  const jb = new JitterBuffer({ sampleRate: RATE, targetMs: 1, maxMs: 5000, fadeMs: 1 });
  let next = 0;
  let expect = 0;
  for (let round = 0; round < 50; round++) {
    jb.push(Float32Array.from({ length: 97 + round * 20 }, () => next++));
    const out = pull(jb, 90 + round * 20);
    for (let i = round === 0 ? 1 : 0; i < out.length; i++) assert.equal(out[i], expect + i);
    expect += out.length;
  }
});

test('RTT prefers ping/pong, and falls back to sent-frame → decoded-frame timing', () => {
  const m = new RttMeter({ window: 3 });
  assert.equal(m.rttMs, null);
  m.onFrameSent(0, 1000);
  m.onFrameSent(1, 1080);
  m.onFrameSent(2, 1160);
  m.onFramesDecoded(2, 1250);
  assert.equal(m.source, 'audio');
  assert.equal(m.rttMs, (250 + 170) / 2);
  m.onPong(2000, 2030);
  m.onPong(3000, 3050);
  m.onPong(4000, 4010);
  assert.equal(m.source, 'ping');
  assert.equal(m.rttMs, 30);
  assert.equal(m.onPong(5000, 4990), null, 'clock going backwards is ignored');
});
