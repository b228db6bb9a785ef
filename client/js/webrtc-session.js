// One conversation as a WebRTC call (POST v1/realtime/calls): the microphone track goes to the server as
// Opus over RTP, the assistant comes back on the answer's track and plays from an <audio> element - from an
// RTCPeerConnection, so the browser's echo canceller has it as its reference - and the events travel on
// the `oai-events` data channel, translated to and from the page's /api/chat events (core/realtime-dialect.js).
// RTP conceals a lost packet instead of stalling every frame behind it, as TCP does on Wi-Fi.
// Same callbacks as ChatSession (session.js), so app.js drives either.

import { createSessionUrl, describeClose } from './core/protocol.js';
import { closeCodeFor, fromRealtime, toRealtime } from './core/realtime-dialect.js';

const SETUP_TIMEOUT_MS = 15000;
// The answer's track sends a frame every 20 ms, silence included, so a live call never goes quiet: ICE
// turning 'disconnected' means nothing arrives (a replica killed, a network gone). Chromium calls it
// 'failed' only after ~30 s; past this grace the call is taken as lost (1006) and the page reconnects to
// another replica. A Wi-Fi blip shorter than this recovers by itself and the call goes on.
export const DISCONNECTED_GRACE_MS = 5000;

/** WebRTC itself could not carry the call (no WebRTC, no media path, no event channel): use the WebSocket. */
export class CallSetupFailed extends Error {}

/** The server refused the session (capacity, access, a bad request): the WebSocket would be refused too. */
export class CallRefused extends Error {
  constructor(message, closeCode) {
    super(message);
    this.closeCode = closeCode;
  }
}

const REFUSAL_CLOSE_CODES = Object.freeze({ 400: 1008, 401: 4401, 403: 4403, 413: 1008, 503: 1013 });

export class WebRtcSession {
  /** @param handlers as ChatSession's: onHandshake(), onText(str), onEvent(json), onServerError(str), onClose(info) */
  constructor(handlers) {
    this.h = handlers;
    this.pc = null;
    this.channel = null;
    this.audio = null;
    this.live = false;
    this.ended = false;
    this.ending = null; // {code, message} of the server's last fatal error event
    this.abandoned = false;
    this.lostTimer = null;
  }

  /**
   * Set the session up (POST api/sessions: any persona length), offer the call with its ticket and wait until
   * the server's session.created arrives. Rejects with CallSetupFailed (why) when WebRTC cannot carry the
   * call, so the caller may use the WebSocket instead, and with CallRefused or the ticket's SessionSetupError
   * when the server refuses the session; once live, ends go to onClose.
   */
  async open(pageUrl, params, micStream, fetchFn = globalThis.fetch) {
    if (typeof RTCPeerConnection !== 'function') throw new CallSetupFailed('this browser has no WebRTC');
    const ticketUrl = new URL(await createSessionUrl(pageUrl, params, fetchFn));
    const callUrl = new URL('v1/realtime/calls', pageUrl);
    callUrl.search = ticketUrl.search; // ?session=<ticket> (or, from a server without tickets, the parameters)
    const pc = new RTCPeerConnection();
    this.pc = pc;
    for (const track of micStream.getAudioTracks()) pc.addTrack(track, micStream);
    const channel = pc.createDataChannel('oai-events');
    this.channel = channel;
    // Before the call is live an end is a setup failure (open() rejects); after, it is the call's end.
    const ready = new Promise((resolve, reject) => {
      channel.onmessage = (ev) => this.handle(ev.data, resolve);
      channel.onclose = () => {
        if (this.live) this.closed(); else reject(new CallSetupFailed('the event channel closed'));
      };
      pc.onconnectionstatechange = () => {
        clearTimeout(this.lostTimer);
        if (pc.connectionState === 'disconnected' && this.live) {
          this.lostTimer = setTimeout(() => {
            if (pc.connectionState !== 'connected') this.closed(1006, 'The connection to the server was lost (no media for '
              + `${DISCONNECTED_GRACE_MS / 1000} s).`);
          }, DISCONNECTED_GRACE_MS);
          return;
        }
        if (pc.connectionState !== 'failed') return;
        if (this.live) this.closed(1006, 'The media connection failed.');
        else reject(new CallSetupFailed('the media connection failed'));
      };
    });
    pc.ontrack = (ev) => {
      this.audio = new Audio();
      this.audio.srcObject = ev.streams[0] || new MediaStream([ev.track]);
      this.audio.play().catch((err) => this.h.onServerError?.(`Playback could not start: ${err.message}`));
    };
    let timer;
    try {
      await pc.setLocalDescription(await pc.createOffer());
      const res = await fetchFn(callUrl, { method: 'POST', body: pc.localDescription.sdp, headers: { 'content-type': 'application/sdp' } });
      if (!res.ok) {
        let error = {};
        try { error = (await res.json()).error || {}; } catch { /* not JSON */ }
        const message = error.message || `the call was refused (HTTP ${res.status})`;
        if (res.status === 404 || res.status === 405 || error.code === 'invalid_offer') throw new CallSetupFailed(message);
        throw new CallRefused(message, REFUSAL_CLOSE_CODES[res.status] ?? 1011);
      }
      await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
      await Promise.race([ready, new Promise((_, reject) => {
        timer = setTimeout(() => reject(new CallSetupFailed(`no answer on the event channel within ${SETUP_TIMEOUT_MS / 1000} s`)), SETUP_TIMEOUT_MS);
      })]);
    } catch (err) {
      this.ended = true; // a failed setup is the caller's to report, not onClose's
      pc.close();
      throw err instanceof CallSetupFailed || err instanceof CallRefused ? err : new CallSetupFailed(String(err.message || err));
    } finally {
      clearTimeout(timer);
    }
    if (this.abandoned) { this.close(); return; }
    this.live = true;
    this.h.onHandshake();
  }

  handle(data, ready) {
    let ev;
    try { ev = JSON.parse(data); } catch { return; }
    const out = fromRealtime(ev);
    if (!out) return;
    if (out.kind === 'ready') ready?.();
    else if (out.kind === 'text') this.h.onText(out.text);
    else if (out.kind === 'event') this.h.onEvent(out.event);
    else if (out.kind === 'error') {
      this.ending = { code: closeCodeFor(out.code), message: out.message };
      this.h.onServerError(out.message);
    }
  }

  sendEvent(event) {
    const message = toRealtime(event);
    if (!message || !this.channel || this.channel.readyState !== 'open') return Boolean(message === null && this.live);
    this.channel.send(JSON.stringify(message));
    return true;
  }

  sendAudio() { return false; } // the microphone is the call's own track

  /** Inbound/outbound RTP packets and the RTCP round trip, for the page's counters. */
  async stats() {
    if (!this.pc) return null;
    const out = { packetsSent: 0, packetsReceived: 0, rttMs: null };
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'audio') out.packetsSent += s.packetsSent || 0;
      if (s.type === 'inbound-rtp' && s.kind === 'audio') out.packetsReceived += s.packetsReceived || 0;
      if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime != null) out.rttMs = 1000 * s.currentRoundTripTime;
    });
    return out;
  }

  close() {
    this.abandoned = true;
    if (this.ended) return;
    this.channel?.close();
    this.closed(1000);
  }

  /** The call's one end: onClose with the server's reason (its last error event), else ``code``/``lost``. */
  closed(code, lost = null) {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.lostTimer);
    const wasLive = this.live;
    this.live = false;
    if (this.audio) this.audio.srcObject = null;
    this.pc?.close();
    const ending = code === 1000 ? { code: 1000, message: null } : (this.ending || { code: 1006, message: lost });
    this.h.onClose({ code: ending.code, reason: '', message: ending.message || describeClose(ending.code, ''), wasLive });
  }
}
