// Mic frames → Opus (WebCodecs AudioEncoder) → Ogg pages (our muxer). One page per 80 ms frame, so
// every WebSocket audio message is one model step; the first one also carries OpusHead/OpusTags.

import { OggOpusMuxer, isOpusHead, parseOpusHead } from '../core/opus.js';

const SAMPLE_RATE = 24000;
const BASE_CONFIG = { codec: 'opus', sampleRate: SAMPLE_RATE, numberOfChannels: 1, bitrate: 32000 };
// 20 ms packets: the Opus default, supported everywhere WebCodecs is; four make one 80 ms page.
const OPUS_OPTIONS = { frameDuration: 20000, application: 'voip', signal: 'voice', complexity: 5 };

export async function opusEncoderConfig() {
  const full = { ...BASE_CONFIG, opus: OPUS_OPTIONS };
  try {
    if ((await AudioEncoder.isConfigSupported(full)).supported) return full;
  } catch { /* older engines reject unknown opus members: fall back to the plain config */ }
  const plain = { ...BASE_CONFIG, opus: { frameDuration: 20000 } };
  if ((await AudioEncoder.isConfigSupported(plain)).supported) return plain;
  throw new Error('This browser cannot encode Opus with WebCodecs.');
}

export class OpusOggEncoder {
  /** @param {(pages: Uint8Array[]) => void} onPages called with the pages of each finished page group */
  constructor(config, onPages, onError) {
    this.onPages = onPages;
    this.muxer = null;
    this.headers = null;
    this.timestampUs = 0;
    this.encoder = new AudioEncoder({
      output: (chunk, metadata) => this.handleChunk(chunk, metadata),
      error: (e) => onError(e),
    });
    this.encoder.configure(config);
  }

  handleChunk(chunk, metadata) {
    if (!this.muxer) {
      // The encoder's own OpusHead (if it gives one) carries its real look-ahead as pre-skip.
      const desc = metadata && metadata.decoderConfig && metadata.decoderConfig.description;
      const bytes = desc ? new Uint8Array(desc instanceof ArrayBuffer ? desc : desc.buffer) : null;
      const preSkip = bytes && isOpusHead(bytes) ? parseOpusHead(bytes).preSkip : 312;
      this.muxer = new OggOpusMuxer({ preSkip, inputSampleRate: SAMPLE_RATE });
      this.headers = this.muxer.headerPages();
    }
    const packet = new Uint8Array(chunk.byteLength);
    chunk.copyTo(packet);
    const page = this.muxer.addPacket(packet);
    if (!page) return;
    const pages = this.headers ? [...this.headers, page] : [page];
    this.headers = null;
    this.onPages(pages);
  }

  /** Encode one 1920-sample 24 kHz frame. */
  encode(frame) {
    if (this.encoder.state !== 'configured') return;
    const data = new AudioData({
      format: 'f32', sampleRate: SAMPLE_RATE, numberOfFrames: frame.length, numberOfChannels: 1,
      timestamp: this.timestampUs, data: frame,
    });
    this.timestampUs += Math.round((frame.length * 1e6) / SAMPLE_RATE);
    this.encoder.encode(data);
    data.close();
  }

  close() {
    if (this.encoder.state !== 'closed') this.encoder.close();
  }
}
