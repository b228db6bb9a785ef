import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { oggCrc32 } from '../../client/js/core/crc32.js';
import { writePage, OggReader, concatBytes } from '../../client/js/core/ogg.js';
import {
  OggOpusMuxer, parseOpusHead, isOpusHead, isOpusTags, opusPacketDuration, buildOpusTags,
} from '../../client/js/core/opus.js';

const fixture = new Uint8Array(readFileSync(new URL('./fixtures/sphn_speech_2s.ogg', import.meta.url)));

test('Ogg CRC-32 matches the known check value of polynomial 0x04c11db7 (unreflected)', () => {
  // CRC-32/MPEG-2 differs only by its 0xffffffff init; Ogg uses init 0: check value of "123456789".
  assert.equal(oggCrc32(new TextEncoder().encode('123456789')), 0x89a1897f);
  assert.equal(oggCrc32(new Uint8Array(0)), 0);
});

test('every page of a real sphn stream has a CRC our implementation reproduces', () => {
  const reader = new OggReader();
  const pages = reader.push(fixture);
  assert.ok(pages.length > 10);
  assert.equal(reader.crcErrors, 0);
});

test('demuxes the sphn fixture: OpusHead, OpusTags, then audio whose TOC durations match granules', () => {
  const pages = new OggReader().push(fixture);
  assert.ok(pages[0].bos);
  assert.ok(isOpusHead(pages[0].packets[0]));
  const head = parseOpusHead(pages[0].packets[0]);
  assert.equal(head.channels, 1);
  assert.equal(head.mappingFamily, 0);
  assert.equal(head.inputSampleRate, 48000); // informational only; sphn writes 48 kHz here
  assert.ok(isOpusTags(pages[1].packets[0]));
  let granule = 0;
  for (const page of pages.slice(2)) {
    for (const p of page.packets) granule += opusPacketDuration(p);
    assert.equal(page.granule, granule, `granule of page ${page.sequence}`);
  }
  assert.equal(granule, 2 * 48000, '2 s of 24 kHz audio = 96000 granules at 48 kHz');
});

test('the reader reassembles pages split at arbitrary byte boundaries', () => {
  const whole = new OggReader().push(fixture).flatMap((p) => p.packets);
  const reader = new OggReader();
  const split = [];
  for (let i = 0; i < fixture.length; i += 37) split.push(...reader.push(fixture.subarray(i, i + 37)));
  assert.deepEqual(split.flatMap((p) => p.packets), whole);
});

test('a corrupted page is skipped and the reader resyncs on the next one', () => {
  const bad = fixture.slice();
  const pages = new OggReader().push(fixture);
  const secondAudioPageOffset = fixture.indexOf(0x53, 100); // somewhere inside the stream
  bad[secondAudioPageOffset + 40] ^= 0xff;
  const reader = new OggReader();
  const got = reader.push(bad);
  assert.equal(reader.crcErrors >= 1, true);
  assert.equal(got.length, pages.length - 1);
});

test('packets longer than 255 bytes and exact multiples of 255 are laced correctly', () => {
  const packets = [new Uint8Array(255).fill(1), new Uint8Array(600).fill(2), new Uint8Array(0), new Uint8Array(3).fill(4)];
  const page = writePage({ packets, granule: 123456789012, serial: 7, sequence: 3 });
  assert.deepEqual([...page.subarray(27, 27 + page[26])], [255, 0, 255, 255, 90, 0, 3]);
  const [parsed] = new OggReader().push(page);
  assert.deepEqual(parsed.packets, packets);
  assert.equal(parsed.granule, 123456789012);
  assert.equal(parsed.serial, 7);
  assert.equal(parsed.sequence, 3);
});

test('muxer writes BOS OpusHead and OpusTags pages, then 80 ms pages with 48 kHz granules', () => {
  const mux = new OggOpusMuxer({ serial: 0x1234, preSkip: 312 });
  const [headPage, tagsPage] = mux.headerPages();
  const celt20ms = new Uint8Array([0xf8, 1, 2, 3]); // config 31 (CELT 20 ms), code 0
  const pages = [];
  for (let i = 0; i < 8; i++) { const p = mux.addPacket(celt20ms); if (p) pages.push(p); }
  assert.equal(pages.length, 2, 'four 20 ms packets per page');
  const parsed = new OggReader().push(concatBytes([headPage, tagsPage, ...pages]));
  assert.equal(parsed[0].bos, true);
  assert.equal(parsed[0].packets.length, 1);
  assert.deepEqual(parseOpusHead(parsed[0].packets[0]), {
    version: 1, channels: 1, preSkip: 312, inputSampleRate: 24000, outputGain: 0, mappingFamily: 0,
  });
  assert.deepEqual(parsed[1].packets[0], buildOpusTags());
  assert.deepEqual(parsed.map((p) => p.granule), [0, 0, 3840, 7680]);
  assert.deepEqual(parsed.map((p) => p.sequence), [0, 1, 2, 3]);
  assert.ok(parsed.every((p) => p.serial === 0x1234));
  assert.equal(parsed[2].packets.length, 4);
});

test('muxer refuses audio before headers and flushes a partial page on demand', () => {
  const mux = new OggOpusMuxer();
  assert.throws(() => mux.addPacket(new Uint8Array([0xf8])), /header/);
  mux.headerPages();
  assert.equal(mux.addPacket(new Uint8Array([0xf8])), null);
  const [page] = new OggReader().push(mux.flush({ eos: true }));
  assert.equal(page.eos, true);
  assert.equal(page.granule, 960);
  assert.equal(mux.flush(), null);
});

test('TOC parsing covers SILK, hybrid, CELT and every frame-count code', () => {
  assert.equal(opusPacketDuration(new Uint8Array([(1 << 3) | 0])), 960); // SILK NB 20 ms
  assert.equal(opusPacketDuration(new Uint8Array([(3 << 3) | 0])), 2880); // SILK 60 ms
  assert.equal(opusPacketDuration(new Uint8Array([(13 << 3) | 1])), 1920); // hybrid 20 ms ×2
  assert.equal(opusPacketDuration(new Uint8Array([(16 << 3) | 2])), 240); // CELT 2.5 ms ×2
  assert.equal(opusPacketDuration(new Uint8Array([(31 << 3) | 3, 4])), 3840); // CELT 20 ms ×4 = 80 ms
});
