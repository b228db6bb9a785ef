// The browser's WebRTC call (client/js/webrtc-session.js) against a scripted RTCPeerConnection: how a live
// call that stops receiving media ends. (The real browser path is tested in headless Chromium:
// tests/test_browser_e2e.py; this is the part a real network has to be broken to see.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DISCONNECTED_GRACE_MS, WebRtcSession } from '../../client/js/webrtc-session.js';
import { shouldReconnect } from '../../client/js/core/protocol.js';

class ScriptedChannel {
  constructor() { this.readyState = 'open'; this.sent = []; }
  send(data) { this.sent.push(data); }
  close() { this.readyState = 'closed'; }
}

class ScriptedPeerConnection {
  constructor() {
    this.connectionState = 'new';
    this.closedByClient = false;
    ScriptedPeerConnection.last = this;
  }
  addTrack() {}
  createDataChannel() { this.channel = new ScriptedChannel(); return this.channel; }
  async createOffer() { return { type: 'offer', sdp: 'v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n' }; }
  async setLocalDescription(desc) { this.localDescription = desc; }
  async setRemoteDescription(desc) {
    this.remoteDescription = desc;
    setImmediate(() => { // the server's first event once the channel opens
      this.state('connected');
      this.channel.onmessage({ data: JSON.stringify({ type: 'session.created', session: { id: 'sess_1' } }) });
    });
  }
  state(next) { this.connectionState = next; this.onconnectionstatechange?.(); }
  close() { this.closedByClient = true; this.connectionState = 'closed'; }
}

function scriptedFetch(url) {
  if (String(url).endsWith('api/sessions')) {
    return Promise.resolve(new Response(JSON.stringify({ id: 'tkt_1', expires_in: 60 }), { status: 200 }));
  }
  return Promise.resolve(new Response('v=0\r\n', { status: 201, headers: { 'content-type': 'application/sdp' } }));
}

async function liveCall() {
  globalThis.RTCPeerConnection = ScriptedPeerConnection;
  const ends = [];
  const session = new WebRtcSession({
    onHandshake() {}, onText() {}, onEvent() {}, onServerError() {}, onClose: (info) => ends.push(info),
  });
  const mic = { getAudioTracks: () => [] };
  await session.open('http://voice.example/', { voice: 'NATM1' }, mic, scriptedFetch);
  assert.equal(session.live, true);
  return { session, pc: ScriptedPeerConnection.last, ends };
}

test('a live call that receives nothing for the grace ends as lost (1006) and the page reconnects', async (t) => {
  const { pc, ends } = await liveCall();
  t.mock.timers.enable({ apis: ['setTimeout'] });
  pc.state('disconnected'); // a replica killed: no RTP, no ICE answers - Chromium says 'failed' only ~30 s later
  t.mock.timers.tick(DISCONNECTED_GRACE_MS - 1);
  assert.deepEqual(ends, []);
  t.mock.timers.tick(1);
  assert.equal(ends.length, 1);
  assert.equal(ends[0].code, 1006);
  assert.equal(ends[0].wasLive, true);
  assert.match(ends[0].message, /lost/);
  assert.equal(pc.closedByClient, true);
  assert.equal(shouldReconnect(ends[0].code, ends[0].wasLive, 0), true);
});

test('a short network blip recovers: the call goes on', async (t) => {
  const { session, pc, ends } = await liveCall();
  t.mock.timers.enable({ apis: ['setTimeout'] });
  pc.state('disconnected');
  t.mock.timers.tick(DISCONNECTED_GRACE_MS / 2);
  pc.state('connected');
  t.mock.timers.tick(DISCONNECTED_GRACE_MS * 2);
  assert.deepEqual(ends, []);
  assert.equal(session.live, true);
  session.close();
  assert.equal(ends.length, 1);
  assert.equal(ends[0].code, 1000);
});

test('a failed connection ends the live call at once, with the server\'s reason when it gave one', async (t) => {
  const { session, pc, ends } = await liveCall();
  pc.channel.onmessage({ data: JSON.stringify({ type: 'error', error: { type: 'server_error', code: 'server_draining', message: 'The replica is draining.' } }) });
  pc.state('failed');
  assert.equal(ends.length, 1);
  assert.equal(ends[0].message, 'The replica is draining.');
  assert.equal(session.live, false);
});
