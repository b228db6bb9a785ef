// Web Audio wiring: microphone → capture worklet (→ 24 kHz frames), and decoded speech → playback
// worklet → speakers, through a WebRTC loopback so the echo canceller hears it (audio/echo-reference.js).
// The context keeps the device's native rate; the worklets resample.

import { routePlayback } from './echo-reference.js';

const CAPTURE_URL = new URL('../worklets/capture-worklet.js', import.meta.url);
const PLAYBACK_URL = new URL('../worklets/playback-worklet.js', import.meta.url);

export class AudioEngine {
  constructor({ targetMs = 120, maxMs = 400, echoReference = true } = {}) {
    this.jitter = { targetMs, maxMs };
    this.echoReference = echoReference;
    this.route = null; // how playback reaches the speakers: { path, reason, stats(), close() }
    this.context = null;
    this.stream = null;
    this.capture = null;
    this.playback = null;
    this.onFrame = () => {};
    this.onPlaybackStats = () => {};
  }

  /** Ask for the mic (echo cancellation matters: the model must not hear itself) and start capture. */
  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    this.context = new AudioContext({ latencyHint: 'interactive' });
    await Promise.all([
      this.context.audioWorklet.addModule(CAPTURE_URL),
      this.context.audioWorklet.addModule(PLAYBACK_URL),
    ]);
    const source = this.context.createMediaStreamSource(this.stream);
    // No outputs: the node is still rendered, and nothing from the mic leaks to the speakers.
    this.capture = new AudioWorkletNode(this.context, 'bizra-capture', { numberOfInputs: 1, numberOfOutputs: 0, channelCount: 1, channelCountMode: 'explicit' });
    this.capture.port.onmessage = ({ data }) => this.onFrame(data);
    source.connect(this.capture);

    if (this.context.state === 'suspended') await this.context.resume();
    return this.context.sampleRate;
  }

  /** Playback of decoded speech (the WebSocket path; a WebRTC call plays its own track). */
  async startPlayback() {
    this.playback = new AudioWorkletNode(this.context, 'bizra-playback', {
      numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1], processorOptions: this.jitter,
    });
    this.playback.port.onmessage = ({ data }) => this.onPlaybackStats(data);
    this.route = await routePlayback(this.context, this.playback, { loopback: this.echoReference });
    return this.route;
  }

  play(samples, sampleRate) {
    if (this.playback) this.playback.port.postMessage({ type: 'pcm', samples, sampleRate }, [samples.buffer]);
  }

  flush() {
    if (this.playback) this.playback.port.postMessage({ type: 'flush' });
  }

  async stop() {
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    if (this.capture) this.capture.port.onmessage = null;
    if (this.route) this.route.close();
    if (this.context && this.context.state !== 'closed') await this.context.close();
    this.stream = this.context = this.capture = this.playback = this.route = null;
  }
}

/** Map getUserMedia failures to sentences that tell the user what to do. */
export function describeMicError(err) {
  switch (err && err.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Microphone access was denied. Allow the microphone for this site (icon in the address bar) and connect again.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No microphone was found. Plug one in or check your system sound settings.';
    case 'NotReadableError':
    case 'AbortError':
      return 'The microphone is busy or unavailable (another application may be using it).';
    default:
      return `Could not start audio: ${err && err.message ? err.message : err}`;
  }
}
