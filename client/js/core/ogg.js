// Ogg container pages (RFC 3533): writing whole-packet pages and a streaming reader that
// reassembles packets across pages. Codec-agnostic; Opus specifics live in opus.js.

import { oggCrc32 } from './crc32.js';

export const HeaderType = Object.freeze({ CONTINUED: 0x01, BOS: 0x02, EOS: 0x04 });
const HEADER_SIZE = 27;
const CAPTURE = [0x4f, 0x67, 0x67, 0x53]; // "OggS"

/**
 * Serialise one page holding complete packets. `granule` is the codec's position after the last
 * packet on the page (a Number; -1 means "no packet ends here").
 */
export function writePage({ packets, granule, serial, sequence, bos = false, eos = false }) {
  const lacing = [];
  let bodySize = 0;
  for (const packet of packets) {
    // A packet is laced as n×255 + remainder; a remainder of 0 is how a multiple of 255 ends.
    let left = packet.length;
    while (left >= 255) { lacing.push(255); left -= 255; }
    lacing.push(left);
    bodySize += packet.length;
  }
  if (lacing.length > 255) throw new Error(`page needs ${lacing.length} segments (max 255)`);

  const page = new Uint8Array(HEADER_SIZE + lacing.length + bodySize);
  const view = new DataView(page.buffer);
  page.set(CAPTURE, 0);
  page[4] = 0; // stream structure version
  page[5] = (bos ? HeaderType.BOS : 0) | (eos ? HeaderType.EOS : 0);
  view.setBigInt64(6, BigInt(granule), true);
  view.setUint32(14, serial >>> 0, true);
  view.setUint32(18, sequence >>> 0, true);
  view.setUint32(22, 0, true); // CRC is computed over the page with this field zeroed
  page[26] = lacing.length;
  page.set(lacing, HEADER_SIZE);
  let offset = HEADER_SIZE + lacing.length;
  for (const packet of packets) { page.set(packet, offset); offset += packet.length; }
  view.setUint32(22, oggCrc32(page), true);
  return page;
}

/** Concatenate byte arrays (pages into one WebSocket message, for example). */
export function concatBytes(chunks) {
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const out = new Uint8Array(total);
  let offset = 0;
  for (const c of chunks) { out.set(c, offset); offset += c.length; }
  return out;
}

/**
 * Streaming page reader: feed arbitrary byte chunks, get parsed pages with their completed packets.
 * Pages whose CRC fails are skipped (counted in `crcErrors`) and the reader resyncs on the next
 * capture pattern, so one corrupt message cannot wedge playback.
 */
export class OggReader {
  constructor() {
    this.buffer = new Uint8Array(0);
    this.partial = []; // pieces of a packet continued on the next page
    this.crcErrors = 0;
    this.pagesRead = 0;
  }

  push(bytes) {
    this.buffer = this.buffer.length ? concatBytes([this.buffer, bytes]) : bytes.slice();
    const pages = [];
    let pos = 0;
    for (;;) {
      const start = findCapture(this.buffer, pos);
      if (start < 0) { pos = Math.max(pos, this.buffer.length - 3); break; }
      pos = start;
      if (this.buffer.length - pos < HEADER_SIZE) break;
      const nSegments = this.buffer[pos + 26];
      if (this.buffer.length - pos < HEADER_SIZE + nSegments) break;
      const lacing = this.buffer.subarray(pos + HEADER_SIZE, pos + HEADER_SIZE + nSegments);
      const bodySize = lacing.reduce((n, v) => n + v, 0);
      const pageSize = HEADER_SIZE + nSegments + bodySize;
      if (this.buffer.length - pos < pageSize) break;

      const raw = this.buffer.slice(pos, pos + pageSize);
      if (!crcMatches(raw)) {
        this.crcErrors++;
        pos += 1; // resync: look for the next "OggS"
        continue;
      }
      pages.push(this.parsePage(raw, lacing));
      pos += pageSize;
    }
    this.buffer = this.buffer.slice(pos);
    return pages;
  }

  parsePage(raw, lacing) {
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const headerType = raw[5];
    const page = {
      headerType,
      bos: (headerType & HeaderType.BOS) !== 0,
      eos: (headerType & HeaderType.EOS) !== 0,
      continued: (headerType & HeaderType.CONTINUED) !== 0,
      granule: Number(view.getBigInt64(6, true)),
      serial: view.getUint32(14, true),
      sequence: view.getUint32(18, true),
      packets: [],
    };
    // A lost page leaves a dangling partial (drop it) or an orphan tail (skip it); never splice.
    if (!page.continued) this.partial = [];
    let orphanTail = page.continued && this.partial.length === 0;
    let offset = HEADER_SIZE + lacing.length;
    let segmentStart = offset;
    for (const size of lacing) {
      offset += size;
      if (size < 255) {
        this.partial.push(raw.subarray(segmentStart, offset));
        if (!orphanTail) page.packets.push(concatBytes(this.partial));
        orphanTail = false;
        this.partial = [];
        segmentStart = offset;
      }
    }
    if (segmentStart < offset) this.partial.push(raw.subarray(segmentStart, offset));
    this.pagesRead++;
    return page;
  }
}

function findCapture(buf, from) {
  for (let i = from; i + 3 < buf.length; i++) {
    if (buf[i] === 0x4f && buf[i + 1] === 0x67 && buf[i + 2] === 0x67 && buf[i + 3] === 0x53) return i;
  }
  return -1;
}

function crcMatches(raw) {
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const stored = view.getUint32(22, true);
  const copy = raw.slice();
  copy[22] = copy[23] = copy[24] = copy[25] = 0;
  return oggCrc32(copy) === stored;
}
