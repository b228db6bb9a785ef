// Test helper (not a test): reads an Ogg Opus stream on stdin, demuxes it with the client's
// OggReader and re-muxes the same Opus packets with the client's OggOpusMuxer, writing the new
// stream to stdout. tests/test_client_ogg.py checks a real decoder (sphn/libopus) accepts it.

import { OggReader, concatBytes } from '../../../client/js/core/ogg.js';
import { OggOpusMuxer, isOpusHead, isOpusTags, parseOpusHead } from '../../../client/js/core/opus.js';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(new Uint8Array(chunk));
const pages = new OggReader().push(concatBytes(chunks));
const packets = pages.flatMap((p) => p.packets);
const head = parseOpusHead(packets.find(isOpusHead));
const mux = new OggOpusMuxer({ serial: 0xb12a, preSkip: head.preSkip, pageDuration: Number(process.argv[2] || 3840) });
const out = [...mux.headerPages()];
for (const packet of packets) {
  if (isOpusHead(packet) || isOpusTags(packet)) continue;
  const page = mux.addPacket(packet);
  if (page) out.push(page);
}
const last = mux.flush({ eos: true });
if (last) out.push(last);
process.stdout.write(concatBytes(out));
