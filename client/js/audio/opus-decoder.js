// Server audio: Ogg pages (our demuxer) → Opus packets → WebCodecs AudioDecoder → Float32 PCM.

import { OggReader } from '../core/ogg.js';
import { isOpusHead, isOpusTags, opusPacketDuration, parseOpusHead, OPUS_GRANULE_RATE } from '../core/opus.js';

export class OggOpusDecoder {
  /**
   * @param {(samples: Float32Array, sampleRate: number) => void} onPcm
   * @param {(err: Error) => void} onError
   */
  constructor(onPcm, onError) {
    this.onPcm = onPcm;
    this.onError = onError;
    this.reader = new OggReader();
    this.decoder = null;
    this.timestampUs = 0;
    this.samplesDecoded = 0; // at the decoder's output rate
    this.outputRate = 24000;
  }

  push(bytes) {
    for (const page of this.reader.push(bytes)) {
      for (const packet of page.packets) this.handlePacket(packet);
    }
  }

  handlePacket(packet) {
    if (isOpusHead(packet)) {
      this.configure(packet);
      return;
    }
    if (isOpusTags(packet) || !this.decoder || packet.length === 0) return;
    const durationUs = (opusPacketDuration(packet) * 1e6) / OPUS_GRANULE_RATE;
    this.decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: this.timestampUs, duration: durationUs, data: packet }));
    this.timestampUs += durationUs;
  }

  configure(headPacket) {
    const head = parseOpusHead(headPacket);
    if (this.decoder && this.decoder.state !== 'closed') this.decoder.close(); // a new stream began
    this.decoder = new AudioDecoder({
      output: (audio) => this.handleAudio(audio),
      error: (e) => this.onError(e),
    });
    // The Ogg Opus codec registration takes the OpusHead itself as `description`.
    this.decoder.configure({
      codec: 'opus', sampleRate: 24000, numberOfChannels: head.channels, description: headPacket.slice(),
    });
  }

  handleAudio(audio) {
    try {
      const samples = new Float32Array(audio.numberOfFrames);
      audio.copyTo(samples, { planeIndex: 0, format: 'f32-planar' });
      this.outputRate = audio.sampleRate;
      this.samplesDecoded += samples.length;
      this.onPcm(samples, audio.sampleRate);
    } finally {
      audio.close();
    }
  }

  /** Decoded audio as whole 80 ms frames, whatever rate the decoder outputs. */
  get framesDecoded() {
    return Math.floor((this.samplesDecoded / this.outputRate) * 12.5 + 1e-9);
  }

  close() {
    if (this.decoder && this.decoder.state !== 'closed') this.decoder.close();
  }
}
