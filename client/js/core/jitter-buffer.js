// Playback jitter buffer (pure; lives inside the playback AudioWorklet). Network audio arrives in
// bursts; this holds `targetMs` before starting, drops the oldest audio when it exceeds `maxMs`
// (latency beats completeness in a conversation), fades out on underrun instead of clicking, and
// flushes at once on barge-in so the assistant stops talking when the user does.

export class JitterBuffer {
  constructor({ sampleRate, targetMs = 120, maxMs = 400, fadeMs = 5 }) {
    if (maxMs < targetMs) throw new Error('maxMs must be >= targetMs');
    this.sampleRate = sampleRate;
    this.targetSamples = Math.round((targetMs * sampleRate) / 1000);
    this.maxSamples = Math.round((maxMs * sampleRate) / 1000);
    this.fadeSamples = Math.max(1, Math.round((fadeMs * sampleRate) / 1000));
    this.ring = new Float32Array(nextPow2(this.maxSamples * 2));
    this.readIndex = 0;
    this.count = 0;
    this.playing = false; // false = (re)buffering up to the target
    this.tail = new Float32Array(0); // after a flush: a few ms fading to silence, played first
    this.fadeInLeft = 0;
    this.stats = { underruns: 0, droppedSamples: 0, flushes: 0, playedSamples: 0 };
  }

  get bufferedSamples() { return this.count; }
  get bufferedMs() { return (this.count * 1000) / this.sampleRate; }

  push(samples) {
    if (this.count + samples.length > this.ring.length) this.grow(this.count + samples.length);
    const cap = this.ring.length;
    let write = (this.readIndex + this.count) % cap;
    for (let i = 0; i < samples.length; i++) {
      this.ring[write] = samples[i];
      write = write + 1 === cap ? 0 : write + 1;
    }
    this.count += samples.length;
    if (this.count > this.maxSamples) {
      const drop = this.count - this.targetSamples;
      this.readIndex = (this.readIndex + drop) % cap;
      this.count -= drop;
      this.stats.droppedSamples += drop;
      if (this.playing) this.fadeInLeft = this.fadeSamples; // the jump is a discontinuity: ramp in
    }
  }

  /** Fill `out` (Float32Array) with the next samples; silence while buffering. */
  pull(out) {
    out.fill(0);
    let start = 0;
    if (this.tail.length) {
      start = Math.min(out.length, this.tail.length);
      out.set(this.tail.subarray(0, start));
      this.tail = this.tail.subarray(start);
    }
    if (!this.playing) {
      if (this.count < this.targetSamples || this.count === 0) return out;
      this.playing = true;
      this.fadeInLeft = this.fadeSamples;
    }
    const n = Math.min(out.length - start, this.count);
    const cap = this.ring.length;
    for (let j = 0; j < n; j++) {
      const i = start + j;
      let v = this.ring[this.readIndex];
      if (this.fadeInLeft > 0) {
        v *= (this.fadeSamples - this.fadeInLeft + 1) / this.fadeSamples;
        this.fadeInLeft--;
      }
      out[i] = v;
      this.readIndex = this.readIndex + 1 === cap ? 0 : this.readIndex + 1;
    }
    this.count -= n;
    this.stats.playedSamples += n;
    if (start + n < out.length) {
      // Ran dry: ramp what we did play down to zero, then wait for the target again.
      this.stats.underruns++;
      const fade = Math.min(this.fadeSamples, n);
      const end = start + n;
      for (let i = 0; i < fade; i++) out[end - fade + i] *= 1 - (i + 1) / fade;
      this.playing = false;
    }
    return out;
  }

  /** Barge-in: drop everything except a few ms that fade to silence (no click), then rebuffer. */
  flush() {
    this.stats.flushes++;
    const keep = this.playing ? Math.min(this.fadeSamples, this.count) : 0;
    const tail = new Float32Array(keep);
    const cap = this.ring.length;
    for (let i = 0; i < keep; i++) tail[i] = this.ring[(this.readIndex + i) % cap] * (1 - (i + 1) / keep);
    this.tail = tail;
    this.stats.droppedSamples += this.count - keep;
    this.readIndex = 0;
    this.count = 0;
    this.playing = false;
  }

  grow(needed) {
    const next = new Float32Array(nextPow2(needed));
    for (let i = 0; i < this.count; i++) next[i] = this.ring[(this.readIndex + i) % this.ring.length];
    this.ring = next;
    this.readIndex = 0;
  }
}

function nextPow2(n) {
  let p = 1;
  while (p < n) p <<= 1;
  return p;
}
