// One conversation over /api/chat: opens the WebSocket, waits for the 0x00 handshake (the server
// sends it once the persona and voice are prefilled; audio before it would be out of turn), then
// routes each message kind to a callback. Knows the protocol, not the DOM or Web Audio.

import { Kind, decodeMessage, encodeAudio, encodeMetadata, isHandshake, createSessionUrl, describeClose } from './core/protocol.js';

const PING_INTERVAL_MS = 2000;
const UNANSWERED_PINGS_BEFORE_GIVING_UP = 3; // PersonaPlex's own server has no pong: stop asking it

export class ChatSession {
  /**
   * @param {object} handlers onHandshake(), onAudio(bytes), onText(str), onEvent(json), onServerError(str),
   *   onClose({code, reason, message, wasLive})
   */
  constructor(handlers) {
    this.h = handlers;
    this.ws = null;
    this.live = false;
    this.pingTimer = null;
    this.serverError = null;
    this.pingsSent = 0;
    this.pongsSeen = 0;
    this.abandoned = false; // close() before the WebSocket exists: do not open it
  }

  /** Set the session up (POST api/sessions: any persona length) and connect with its ticket. */
  async open(pageUrl, params, fetchFn = globalThis.fetch) {
    let url;
    try {
      url = await createSessionUrl(pageUrl, params, fetchFn);
    } catch (err) {
      if (!this.abandoned) this.h.onClose({ code: 0, reason: '', message: err.message, wasLive: false });
      return;
    }
    if (this.abandoned) return; // cancelled while the session was being set up
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    ws.onmessage = (ev) => this.handle(ev.data);
    ws.onclose = (ev) => this.closed(ev);
    this.ws = ws;
  }

  handle(data) {
    if (typeof data === 'string') return; // the protocol is binary-only; ignore stray text frames
    const bytes = new Uint8Array(data);
    if (!this.live) {
      if (isHandshake(bytes)) {
        this.live = true;
        this.pingTimer = setInterval(() => this.ping(), PING_INTERVAL_MS);
        this.ping();
        this.h.onHandshake();
        return;
      }
    }
    let msg;
    try {
      msg = decodeMessage(bytes);
    } catch (err) {
      this.h.onProtocolWarning?.(String(err.message || err));
      return;
    }
    switch (msg.kind) {
      case Kind.AUDIO: this.h.onAudio(msg.payload); break;
      case Kind.TEXT: this.h.onText(msg.text); break;
      case Kind.METADATA:
        if (!msg.json || typeof msg.json !== 'object') break;
        if (msg.json.type === 'client.pong') this.pongsSeen++;
        this.h.onEvent(msg.json);
        break;
      case Kind.ERROR:
        this.serverError = msg.text;
        this.h.onServerError(msg.text);
        break;
      default: break; // control and ping carry nothing the client must act on
    }
  }

  ping() {
    if (this.pingsSent >= UNANSWERED_PINGS_BEFORE_GIVING_UP && this.pongsSeen === 0) {
      clearInterval(this.pingTimer); // RTT then comes from audio timing (see core/rtt.js)
      return;
    }
    if (this.sendEvent({ type: 'client.ping', t: performance.now() })) this.pingsSent++;
  }

  get isOpen() { return this.ws !== null && this.ws.readyState === WebSocket.OPEN; }

  sendAudio(oggBytes) {
    if (this.live && this.isOpen) { this.ws.send(encodeAudio(oggBytes)); return true; }
    return false;
  }

  sendEvent(obj) {
    if (this.isOpen) { this.ws.send(encodeMetadata(obj)); return true; }
    return false;
  }

  close() {
    this.abandoned = true;
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, 'client disconnect');
  }

  closed(ev) {
    clearInterval(this.pingTimer);
    const wasLive = this.live;
    this.live = false;
    this.ws = null;
    let message = describeClose(ev.code, ev.reason);
    if (this.serverError) {
      // Capacity and auth keep their actionable sentence; otherwise the server's own words say most.
      message = ev.code === 1013 || ev.code === 4401
        ? `${message} Server said: ${this.serverError}`
        : `Server error: ${this.serverError}`;
    } else if (ev.code === 1006 && !wasLive) {
      message = 'Could not open a session: the server refused the connection or is unreachable.';
    }
    this.h.onClose({ code: ev.code, reason: ev.reason, message, wasLive });
  }
}
