// Cuts a sample stream into fixed-size frames: 1920 samples at 24 kHz = one 80 ms model step.

export class Framer {
  constructor(frameSize = 1920) {
    this.frameSize = frameSize;
    this.current = new Float32Array(frameSize);
    this.fill = 0;
  }

  /** Append samples; returns the frames completed by them (each a fresh Float32Array). */
  push(samples) {
    const frames = [];
    let offset = 0;
    while (offset < samples.length) {
      const n = Math.min(this.frameSize - this.fill, samples.length - offset);
      this.current.set(samples.subarray(offset, offset + n), this.fill);
      this.fill += n;
      offset += n;
      if (this.fill === this.frameSize) {
        frames.push(this.current);
        this.current = new Float32Array(this.frameSize);
        this.fill = 0;
      }
    }
    return frames;
  }

  reset() { this.fill = 0; }
}
