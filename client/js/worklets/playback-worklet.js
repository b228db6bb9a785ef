// Playback AudioWorklet: decoded 24 kHz speech is resampled to the device rate and played through
// the jitter buffer; `flush` (barge-in) takes effect on the very next 128-sample render quantum.

import { Resampler } from '../core/resampler.js';
import { JitterBuffer } from '../core/jitter-buffer.js';

const STATS_EVERY = Math.round(sampleRate / 10 / 128); // ~10 reports a second

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetMs = 120, maxMs = 400 } = options.processorOptions || {};
    this.buffer = new JitterBuffer({ sampleRate, targetMs, maxMs });
    this.resampler = null;
    this.quanta = 0;
    this.port.onmessage = ({ data }) => {
      if (data.type === 'pcm') {
        if (!this.resampler || this.resampler.inRate !== data.sampleRate) {
          this.resampler = new Resampler(data.sampleRate, sampleRate);
        }
        this.buffer.push(this.resampler.process(data.samples));
      } else if (data.type === 'flush') {
        this.buffer.flush();
        this.report();
      }
    };
  }

  report() {
    const { underruns, droppedSamples, flushes } = this.buffer.stats;
    this.port.postMessage({
      bufferedMs: this.buffer.bufferedMs, underruns, droppedMs: (droppedSamples * 1000) / sampleRate, flushes,
    });
  }

  process(_inputs, outputs) {
    const out = outputs[0];
    this.buffer.pull(out[0]);
    for (let c = 1; c < out.length; c++) out[c].set(out[0]);
    if (++this.quanta % STATS_EVERY === 0) this.report();
    return true;
  }
}

registerProcessor('bizra-playback', PlaybackProcessor);
