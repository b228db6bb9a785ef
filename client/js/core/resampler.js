// Streaming windowed-sinc resampler for any rate pair (48000 or 44100 → 24000 for capture,
// 24000 → the output device's rate for playback). The context runs at its native rate and we
// resample ourselves, because browsers disagree on mixing rates inside one AudioContext.

const TABLE_RESOLUTION = 512; // kernel samples per input-sample distance (linear interpolation between)

function blackman(u) { // u in [-1, 1]
  return 0.42 + 0.5 * Math.cos(Math.PI * u) + 0.08 * Math.cos(2 * Math.PI * u);
}

function buildKernel(halfTaps, cutoff) {
  const n = halfTaps * TABLE_RESOLUTION + 2;
  const table = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const x = i / TABLE_RESOLUTION;
    if (x >= halfTaps) { table[i] = 0; continue; }
    const s = x === 0 ? 1 : Math.sin(Math.PI * cutoff * x) / (Math.PI * cutoff * x);
    table[i] = cutoff * s * blackman(x / halfTaps);
  }
  return table;
}

export class Resampler {
  /**
   * @param {number} inRate  input sample rate (Hz)
   * @param {number} outRate output sample rate (Hz)
   * @param {{halfTaps?: number}} opts taps on each side of the centre; 16 gives ~-60 dB stop band
   */
  constructor(inRate, outRate, { halfTaps = 16 } = {}) {
    if (!(inRate > 0 && outRate > 0)) throw new Error('sample rates must be positive');
    this.inRate = inRate;
    this.outRate = outRate;
    this.step = inRate / outRate;
    this.halfTaps = halfTaps;
    // Low-pass at the lower Nyquist, a little inside it so the short kernel's transition band
    // does not fold energy just above 12 kHz back into the 24 kHz stream.
    this.cutoff = Math.min(1, outRate / inRate) * 0.92;
    this.kernel = buildKernel(halfTaps, this.cutoff);
    this.reset();
  }

  reset() {
    // `halfTaps` zeros of history so the first output lands exactly on the first input sample.
    this.buffer = new Float32Array(this.halfTaps);
    this.position = this.halfTaps; // read position, in samples of `buffer`
  }

  kernelAt(distance) {
    const x = Math.abs(distance) * TABLE_RESOLUTION;
    const i = Math.floor(x);
    const f = x - i;
    return this.kernel[i] + (this.kernel[i + 1] - this.kernel[i]) * f;
  }

  /** Resample the next chunk of the stream; output length varies by ±1 with the phase. */
  process(input) {
    if (this.inRate === this.outRate) return Float32Array.from(input);
    const buf = new Float32Array(this.buffer.length + input.length);
    buf.set(this.buffer, 0);
    buf.set(input, this.buffer.length);
    const h = this.halfTaps;
    const out = [];
    let t = this.position;
    while (Math.floor(t) + h < buf.length) {
      const i0 = Math.floor(t);
      const frac = t - i0;
      let acc = 0;
      let norm = 0;
      for (let k = -h + 1; k <= h; k++) {
        const w = this.kernelAt(frac - k);
        acc += buf[i0 + k] * w;
        norm += w;
      }
      out.push(acc / norm); // normalising keeps unity gain at DC for every phase
      t += this.step;
    }
    // Keep just the history the next output still needs.
    const keepFrom = Math.max(0, Math.floor(t) - h + 1);
    this.buffer = buf.slice(keepFrom);
    this.position = t - keepFrom;
    return Float32Array.from(out);
  }
}
