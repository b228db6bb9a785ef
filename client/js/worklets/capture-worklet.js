// Capture AudioWorklet: runs at the context's native rate (48 or 44.1 kHz), resamples the mic to
// 24 kHz and posts 1920-sample (80 ms) frames, one model step each, to the main thread.

import { Resampler } from '../core/resampler.js';
import { Framer } from '../core/framer.js';

const TARGET_RATE = 24000;
const FRAME_SIZE = 1920;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, TARGET_RATE);
    this.framer = new Framer(FRAME_SIZE);
    this.port.onmessage = ({ data }) => {
      if (data.type === 'reset') { this.resampler.reset(); this.framer.reset(); }
    };
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) { // absent while the mic track is starting or muted
      for (const frame of this.framer.push(this.resampler.process(channel))) {
        this.port.postMessage(frame, [frame.buffer]);
      }
    }
    return true;
  }
}

registerProcessor('bizra-capture', CaptureProcessor);
