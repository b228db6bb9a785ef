// Playback the echo canceller can hear. Chromium's acoustic echo canceller takes its reference only from
// audio an RTCPeerConnection plays (crbug.com/687574): speech played straight from Web Audio reaches the
// speakers uncancelled, the microphone picks it up, and in full duplex the model hears itself (and the
// energy VAD calls it a barge-in). So the playback worklet's output is sent through a loopback pair of peer
// connections inside this page and played from the receiving end by an <audio> element. Nothing leaves
// the machine: both ends are here, on host candidates. If the loopback cannot be set up, playback goes
// straight to the speakers and the caller is told why (headphones then avoid the echo).

const CONNECT_TIMEOUT_MS = 5000;
// Opus for the loopback: full band, no DTX (silence must not gate the reference), a bitrate that keeps
// the model's 24 kHz speech transparent.
const OPUS_PARAMS = { maxaveragebitrate: '128000', stereo: '0', useinbandfec: '0', usedtx: '0' };

/** The SDP with the Opus payload's fmtp parameters set to OPUS_PARAMS (others kept; no Opus: unchanged). */
export function tuneOpus(sdp) {
  const rtpmap = sdp.match(/a=rtpmap:(\d+) opus\/48000[^\r\n]*/i);
  if (!rtpmap) return sdp;
  const fmtp = new RegExp(`a=fmtp:${rtpmap[1]} ([^\\r\\n]*)`);
  const params = new Map();
  const found = sdp.match(fmtp);
  for (const pair of found ? found[1].split(';') : []) {
    const [key, value = ''] = pair.split('=');
    if (key.trim()) params.set(key.trim(), value.trim());
  }
  for (const [key, value] of Object.entries(OPUS_PARAMS)) params.set(key, value);
  const line = `a=fmtp:${rtpmap[1]} ${[...params].map(([k, v]) => `${k}=${v}`).join(';')}`;
  return found ? sdp.replace(fmtp, line) : sdp.replace(rtpmap[0], `${rtpmap[0]}\r\n${line}`);
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([promise, new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
  })]).finally(() => clearTimeout(timer));
}

/** Route `node` (the playback worklet) to the speakers through a WebRTC loopback; returns the route:
 * `{ path: 'webrtc-loopback' | 'direct', reason, stats(), close() }`; `stats()` resolves to the loopback's
 * `{ packets, delayMs }` (inbound RTP packets; the receiver's mean jitter-buffer delay, what the loopback adds
 * to playback), or null when playback is direct. */
export async function routePlayback(context, node, { loopback = true } = {}) {
  const direct = (reason) => {
    node.connect(context.destination);
    return { path: 'direct', reason, stats: async () => null, close: () => {} };
  };
  if (!loopback) return direct('the echo-reference loopback is turned off');
  if (typeof RTCPeerConnection !== 'function') return direct('this browser has no WebRTC');
  const sender = new RTCPeerConnection();
  const receiver = new RTCPeerConnection();
  const audio = new Audio();
  const close = () => {
    audio.srcObject = null;
    sender.close();
    receiver.close();
  };
  try {
    const destination = context.createMediaStreamDestination();
    node.connect(destination);
    sender.onicecandidate = (e) => { if (e.candidate) receiver.addIceCandidate(e.candidate).catch(() => {}); };
    receiver.onicecandidate = (e) => { if (e.candidate) sender.addIceCandidate(e.candidate).catch(() => {}); };
    for (const track of destination.stream.getAudioTracks()) sender.addTrack(track, destination.stream);
    const remote = new Promise((resolve) => {
      receiver.ontrack = (e) => resolve(e.streams[0] || new MediaStream([e.track]));
    });
    const offer = await sender.createOffer();
    await sender.setLocalDescription(offer);
    await receiver.setRemoteDescription({ type: 'offer', sdp: tuneOpus(offer.sdp) });
    const answer = await receiver.createAnswer();
    await receiver.setLocalDescription(answer);
    await sender.setRemoteDescription({ type: 'answer', sdp: tuneOpus(answer.sdp) });
    audio.srcObject = await withTimeout(remote, CONNECT_TIMEOUT_MS, 'the loopback track');
    await withTimeout(audio.play(), CONNECT_TIMEOUT_MS, 'starting the loopback audio');
  } catch (err) {
    close();
    try { node.disconnect(); } catch { /* not connected */ }
    return direct(`the echo-reference loopback failed (${err && err.message ? err.message : err})`);
  }
  return {
    path: 'webrtc-loopback',
    reason: 'played through a WebRTC loopback so the echo canceller has its reference',
    async stats() {
      let packets = 0; let delay = 0; let emitted = 0;
      (await receiver.getStats()).forEach((s) => {
        if (s.type !== 'inbound-rtp' || s.kind !== 'audio') return;
        packets += s.packetsReceived || 0;
        delay += s.jitterBufferDelay || 0;
        emitted += s.jitterBufferEmittedCount || 0;
      });
      return { packets, delayMs: emitted ? (1000 * delay) / emitted : null };
    },
    close,
  };
}
