import { test } from 'node:test';
import assert from 'node:assert/strict';
import { routePlayback, tuneOpus } from '../../client/js/audio/echo-reference.js';

const OFFER = [
  'v=0', 'm=audio 9 UDP/TLS/RTP/SAVPF 111 63 9', 'a=rtpmap:111 opus/48000/2', 'a=fmtp:111 minptime=10;useinbandfec=1',
  'a=rtpmap:63 red/48000/2', '',
].join('\r\n');

test('the loopback Opus is tuned: full bitrate, no DTX, mono, on the Opus payload only', () => {
  const sdp = tuneOpus(OFFER);
  assert.match(sdp, /a=fmtp:111 minptime=10;useinbandfec=0;maxaveragebitrate=128000;stereo=0;usedtx=0\r\n/);
  assert.equal(sdp.split('a=fmtp:').length, 2); // red's line is untouched, no line added
  const bare = tuneOpus(OFFER.replace('a=fmtp:111 minptime=10;useinbandfec=1\r\n', ''));
  assert.match(bare, /a=rtpmap:111 opus\/48000\/2\r\na=fmtp:111 maxaveragebitrate=128000;stereo=0;useinbandfec=0;usedtx=0\r\n/);
  assert.equal(tuneOpus('v=0\r\nm=audio 9 RTP/AVP 0\r\n'), 'v=0\r\nm=audio 9 RTP/AVP 0\r\n'); // no Opus: as it was
});

test('without WebRTC playback goes straight to the speakers, and says why', async () => {
  const connected = [];
  const context = { destination: 'speakers' };
  const node = { connect: (to) => connected.push(to) };
  const saved = globalThis.RTCPeerConnection;
  delete globalThis.RTCPeerConnection;
  try {
    const route = await routePlayback(context, node);
    assert.equal(route.path, 'direct');
    assert.match(route.reason, /no WebRTC/);
    assert.deepEqual(connected, ['speakers']);
    assert.equal(await route.stats(), null);
    const off = await routePlayback(context, node, { loopback: false });
    assert.equal(off.path, 'direct');
    assert.match(off.reason, /turned off/);
  } finally {
    if (saved) globalThis.RTCPeerConnection = saved;
  }
});
