// Round-trip time: the server echoes {"type":"client.ping","t"} as client.pong. Against a server
// without pongs (PersonaPlex's own), fall back to audio: a full-duplex model answers input frame n
// with output frame n, so "sent frame n → decoded 80 ms frame n" is a round trip plus model step.

export class RttMeter {
  constructor({ window = 8, maxPending = 512 } = {}) {
    this.window = window;
    this.maxPending = maxPending;
    this.pongSamples = [];
    this.audioSamples = [];
    this.frameSendTimes = new Map();
    this.framesMatched = 0;
  }

  onPong(sentAtMs, nowMs) {
    const rtt = nowMs - sentAtMs;
    if (!(rtt >= 0) || !Number.isFinite(rtt)) return null;
    push(this.pongSamples, rtt, this.window);
    return rtt;
  }

  onFrameSent(index, nowMs) {
    this.frameSendTimes.set(index, nowMs);
    if (this.frameSendTimes.size > this.maxPending) {
      this.frameSendTimes.delete(this.frameSendTimes.keys().next().value);
    }
  }

  /** `framesDecoded` = whole 80 ms frames of server audio decoded so far (0-based index = count-1). */
  onFramesDecoded(framesDecoded, nowMs) {
    while (this.framesMatched < framesDecoded) {
      const sent = this.frameSendTimes.get(this.framesMatched);
      this.frameSendTimes.delete(this.framesMatched);
      this.framesMatched++;
      if (sent !== undefined) push(this.audioSamples, nowMs - sent, this.window);
    }
  }

  /** Median of recent samples; pongs win because they measure the network, not the model. */
  get rttMs() {
    const src = this.pongSamples.length ? this.pongSamples : this.audioSamples;
    return src.length ? median(src) : null;
  }

  get source() {
    return this.pongSamples.length ? 'ping' : this.audioSamples.length ? 'audio' : null;
  }
}

function push(arr, v, window) {
  arr.push(v);
  if (arr.length > window) arr.shift();
}

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
