// Ogg Opus mapping (RFC 7845): ID and comment headers, packet durations from the TOC byte, and a
// muxer that pages encoded packets with granule positions counted in 48 kHz samples.

import { writePage, concatBytes } from './ogg.js';

export const OPUS_GRANULE_RATE = 48000; // Ogg Opus granules are always 48 kHz, whatever the input rate
const ascii = (s) => Uint8Array.from(s, (c) => c.charCodeAt(0));
const MAGIC_HEAD = ascii('OpusHead');
const MAGIC_TAGS = ascii('OpusTags');

export function startsWith(bytes, magic) {
  if (bytes.length < magic.length) return false;
  for (let i = 0; i < magic.length; i++) if (bytes[i] !== magic[i]) return false;
  return true;
}
export const isOpusHead = (packet) => startsWith(packet, MAGIC_HEAD);
export const isOpusTags = (packet) => startsWith(packet, MAGIC_TAGS);

/** 19-byte OpusHead, channel mapping family 0 (mono/stereo). */
export function buildOpusHead({ channels = 1, preSkip = 312, inputSampleRate = 24000, outputGain = 0 } = {}) {
  const head = new Uint8Array(19);
  const view = new DataView(head.buffer);
  head.set(MAGIC_HEAD, 0);
  head[8] = 1; // version
  head[9] = channels;
  view.setUint16(10, preSkip, true);
  view.setUint32(12, inputSampleRate, true);
  view.setInt16(16, outputGain, true);
  head[18] = 0; // mapping family
  return head;
}

export function parseOpusHead(packet) {
  if (!isOpusHead(packet) || packet.length < 19) throw new Error('not an OpusHead packet');
  const view = new DataView(packet.buffer, packet.byteOffset, packet.byteLength);
  return {
    version: packet[8],
    channels: packet[9],
    preSkip: view.getUint16(10, true),
    inputSampleRate: view.getUint32(12, true),
    outputGain: view.getInt16(16, true),
    mappingFamily: packet[18],
  };
}

export function buildOpusTags(vendor = 'bizra-voice-client', comments = []) {
  const enc = new TextEncoder();
  const parts = [MAGIC_TAGS];
  const u32 = (n) => { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, n, true); return b; };
  const vendorBytes = enc.encode(vendor);
  parts.push(u32(vendorBytes.length), vendorBytes, u32(comments.length));
  for (const c of comments) { const b = enc.encode(c); parts.push(u32(b.length), b); }
  return concatBytes(parts);
}

// Frame duration in 48 kHz samples for each TOC config (RFC 6716 §3.1): SILK 10/20/40/60 ms,
// hybrid 10/20 ms, CELT 2.5/5/10/20 ms.
const SILK = [480, 960, 1920, 2880];
const HYBRID = [480, 960];
const CELT = [120, 240, 480, 960];

/** Duration of one Opus packet in 48 kHz samples, read from its TOC (and frame-count) byte. */
export function opusPacketDuration(packet) {
  if (packet.length < 1) throw new Error('empty Opus packet');
  const config = packet[0] >> 3;
  const frameSize = config < 12 ? SILK[config & 3] : config < 16 ? HYBRID[config & 1] : CELT[config & 3];
  const code = packet[0] & 3;
  let frames;
  if (code === 0) frames = 1;
  else if (code === 3) {
    if (packet.length < 2) throw new Error('truncated Opus code-3 packet');
    frames = packet[1] & 0x3f;
  } else frames = 2;
  return frameSize * frames;
}

/**
 * Pages Opus packets into an Ogg stream. Header pages first (OpusHead alone on a BOS page, then
 * OpusTags), then audio pages that close once they hold `pageDuration` (48 kHz samples), so one page
 * is one 80 ms model frame by default and each WebSocket message carries whole pages.
 */
export class OggOpusMuxer {
  constructor({ serial = randomSerial(), preSkip = 312, inputSampleRate = 24000, pageDuration = 3840 } = {}) {
    this.serial = serial;
    this.preSkip = preSkip;
    this.inputSampleRate = inputSampleRate;
    this.pageDuration = pageDuration;
    this.sequence = 0;
    this.granule = 0;
    this.pending = [];
    this.pendingDuration = 0;
  }

  headerPages() {
    if (this.sequence !== 0) throw new Error('header pages already written');
    const head = writePage({
      packets: [buildOpusHead({ preSkip: this.preSkip, inputSampleRate: this.inputSampleRate })],
      granule: 0, serial: this.serial, sequence: this.sequence++, bos: true,
    });
    const tags = writePage({ packets: [buildOpusTags()], granule: 0, serial: this.serial, sequence: this.sequence++ });
    return [head, tags];
  }

  /** Add one encoded packet; returns a finished page, or null while the page is still filling. */
  addPacket(packet) {
    if (this.sequence < 2) throw new Error('write the header pages first');
    this.pending.push(packet);
    this.pendingDuration += opusPacketDuration(packet);
    return this.pendingDuration >= this.pageDuration ? this.flush() : null;
  }

  /** Close the current page now (end of stream, or when latency matters more than page count). */
  flush({ eos = false } = {}) {
    if (this.pending.length === 0) return null;
    this.granule += this.pendingDuration;
    const page = writePage({
      packets: this.pending, granule: this.granule, serial: this.serial, sequence: this.sequence++, eos,
    });
    this.pending = [];
    this.pendingDuration = 0;
    return page;
  }
}

function randomSerial() {
  return Math.floor(Math.random() * 0xffffffff) >>> 0;
}
