// Voices of one's own: fill the voice <select> from GET /api/voices (uploaded voices marked "custom"), and,
// when the server allows uploads, record a few seconds from the microphone or pick a file, send it to
// POST /api/voices and select the new voice. The server checks, normalises and stores it; this module only
// says early what the server would refuse anyway (name, size, length) so the user is told at once.
// The pure helpers (names, WAV encoding, requests) are exported for tests/js/voice-upload.test.mjs.

const CAPTURE_URL = new URL('../worklets/capture-worklet.js', import.meta.url);
const RATE = 24000; // the capture worklet's output rate
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
export const DEFAULT_LIMITS = { max_bytes: 16 * 1024 * 1024, max_seconds: 30, min_seconds: 2, max_voices: 32 };
const ACCEPTED = /\.(wav|flac|ogg|opus)$/i;

/** Why ``name`` cannot be a new voice's name (null: it can). ``existing``: the names listed now. */
export function nameProblem(name, existing = []) {
  const value = (name || '').trim();
  if (!value) return 'Give the voice a name first.';
  if (!NAME_PATTERN.test(value)) return 'Use 1 to 64 letters, digits, "_" or "-" for the name, starting with a letter or digit.';
  const clash = existing.find((other) => other.toLowerCase() === value.toLowerCase());
  return clash ? `A voice named ${clash} exists already; choose another name.` : null;
}

/** Why a picked file would be refused before sending it (null: send it). */
export function fileProblem(file, limits = DEFAULT_LIMITS) {
  if (!file) return 'Record or choose a recording first.';
  if (file.name && !ACCEPTED.test(file.name) && !/^audio\/(wav|x-wav|wave|flac|ogg|opus)/.test(file.type || '')) {
    return 'Choose a WAV, FLAC or Ogg-Opus file.';
  }
  if (file.size > limits.max_bytes) return `The file is larger than ${Math.round(limits.max_bytes / 1048576)} MiB.`;
  return null;
}

/** 16-bit PCM mono WAV of float samples in [-1, 1] (what a recording from the microphone is sent as). */
export function encodeWav(samples, sampleRate = RATE) {
  const bytes = new Uint8Array(44 + samples.length * 2);
  const view = new DataView(bytes.buffer);
  const text = (at, s) => { for (let i = 0; i < s.length; i++) bytes[at + i] = s.charCodeAt(i); };
  text(0, 'RIFF'); view.setUint32(4, 36 + samples.length * 2, true); text(8, 'WAVE');
  text(12, 'fmt '); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, sampleRate, true); view.setUint32(28, sampleRate * 2, true);
  view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, 'data'); view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(44 + i * 2, Math.round(s < 0 ? s * 32768 : s * 32767), true);
  }
  return bytes;
}

export function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function errorOf(res) {
  try { return (await res.json()).error || `HTTP ${res.status}`; } catch { return `HTTP ${res.status}`; }
}

/** GET api/voices: ``{voices, default, uploads}``; null when the server has no such route (PersonaPlex's own). */
export async function fetchVoices({ fetchImpl, token }) {
  const res = await fetchImpl('api/voices', { headers: authHeaders(token) });
  return res.ok ? res.json() : null;
}

/** POST api/voices?name=…: ``{ok: true, voice}`` or ``{ok: false, error}`` (the server's sentence). */
export async function uploadVoice({ fetchImpl, token, name, body, contentType }) {
  const res = await fetchImpl(`api/voices?name=${encodeURIComponent(name)}`, {
    method: 'POST', body, headers: { 'Content-Type': contentType || 'application/octet-stream', ...authHeaders(token) },
  });
  return res.status === 201 ? { ok: true, voice: await res.json() } : { ok: false, error: await errorOf(res) };
}

export async function deleteVoice({ fetchImpl, token, name }) {
  const res = await fetchImpl(`api/voices/${encodeURIComponent(name)}`, { method: 'DELETE', headers: authHeaders(token) });
  return res.ok ? { ok: true } : { ok: false, error: await errorOf(res) };
}

/** Fill a <select> with the listing, custom voices labelled; keeps ``keep`` (else the default) selected. */
export function fillVoiceSelect(select, voices, def, keep) {
  const doc = select.ownerDocument;
  const names = voices.map((v) => (typeof v === 'string' ? v : v.name));
  const chosen = names.includes(keep) ? keep : def;
  select.replaceChildren(...voices.map((v) => {
    const name = typeof v === 'string' ? v : v.name;
    const opt = doc.createElement('option');
    opt.value = name;
    opt.textContent = v.kind && v.kind !== 'preset' ? `${name} (${v.kind})` : name;
    opt.dataset.kind = v.kind || 'preset';
    opt.selected = name === chosen;
    return opt;
  }));
}

/** Microphone -> 24 kHz samples through the client's capture worklet, until ``stop()`` or ``maxSeconds``. */
class MicTake {
  constructor(maxSeconds, onTick) {
    this.maxSamples = Math.round(maxSeconds * RATE);
    this.onTick = onTick;
    this.chunks = [];
    this.length = 0;
  }

  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: false },
    });
    this.context = new AudioContext();
    await this.context.audioWorklet.addModule(CAPTURE_URL);
    const node = new AudioWorkletNode(this.context, 'bizra-capture', { numberOfInputs: 1, numberOfOutputs: 0, channelCount: 1, channelCountMode: 'explicit' });
    this.done = new Promise((resolve) => { this.finish = resolve; });
    node.port.onmessage = ({ data }) => {
      if (this.length >= this.maxSamples) return;
      this.chunks.push(data);
      this.length += data.length;
      this.onTick(this.length / RATE);
      if (this.length >= this.maxSamples) this.stop();
    };
    this.context.createMediaStreamSource(this.stream).connect(node);
    if (this.context.state === 'suspended') await this.context.resume();
  }

  async stop() {
    for (const track of this.stream?.getTracks() || []) track.stop();
    if (this.context && this.context.state !== 'closed') await this.context.close();
    const samples = new Float32Array(Math.min(this.length, this.maxSamples));
    let at = 0;
    for (const chunk of this.chunks) {
      const part = chunk.subarray(0, samples.length - at);
      samples.set(part, at);
      at += part.length;
    }
    this.finish?.(samples);
    return samples;
  }
}

/** The upload panel under the voice field (client/index.html #voice-upload). */
export class VoiceUploadPanel {
  constructor({ doc = document, select, token, fetchImpl = (...a) => fetch(...a) }) {
    const $ = (id) => doc.getElementById(id);
    this.select = select;
    this.token = token;
    this.fetchImpl = fetchImpl;
    this.limits = DEFAULT_LIMITS;
    this.names = [];
    this.take = null; // {body: Blob, type, label}
    this.mic = null;
    this.el = {
      panel: $('voice-upload'), form: $('voice-upload-form'), name: $('voice-name'), record: $('voice-record'),
      file: $('voice-file'), takeInfo: $('voice-take'), send: $('voice-send'), remove: $('voice-delete'),
      status: $('voice-upload-status'), help: $('voice-upload-help'),
    };
    if (!this.el.panel) return;
    this.el.form.addEventListener('submit', (e) => { e.preventDefault(); this.send(); });
    this.el.record.addEventListener('click', () => (this.mic ? this.stopRecording() : this.startRecording()));
    this.el.file.addEventListener('change', () => this.picked(this.el.file.files[0]));
    this.el.remove.addEventListener('click', () => this.removeSelected());
    select.addEventListener('change', () => this.showRemove());
  }

  /** Ask the server for its voices and whether it takes uploads; fill the <select>. */
  async refresh(keep = this.select.value) {
    let listing = null;
    try { listing = await fetchVoices({ fetchImpl: this.fetchImpl, token: this.token }); } catch { /* offline */ }
    if (!listing) return null; // a server without api/voices (PersonaPlex's own) still works with the default voice
    const { voices = [], default: def, uploads = { enabled: false } } = listing;
    this.names = voices.map((v) => (typeof v === 'string' ? v : v.name));
    const before = this.select.value;
    if (voices.length) fillVoiceSelect(this.select, voices, def, keep);
    // A new voice selected (or a deleted one replaced): tell the page, as a pick would (a live session switches).
    if (this.select.value !== before) this.select.dispatchEvent(new Event('change'));
    if (this.el.panel) {
      this.el.panel.hidden = !uploads.enabled;
      if (uploads.enabled) {
        this.limits = { ...DEFAULT_LIMITS, ...uploads };
        this.el.help.textContent = `Record or choose ${this.limits.min_seconds}–${this.limits.max_seconds} s of one person `
          + 'speaking clearly (WAV, FLAC or Ogg-Opus). It is stored on this server and anyone with access can use it.';
      }
      this.showRemove();
    }
    return listing;
  }

  say(message, state = '') {
    this.el.status.textContent = message;
    this.el.status.dataset.state = state;
  }

  setTake(take) {
    this.take = take;
    this.el.takeInfo.textContent = take ? take.label : '';
    this.el.send.disabled = !take;
  }

  async startRecording() {
    this.setTake(null);
    this.say('');
    const mic = new MicTake(this.limits.max_seconds, (s) => { this.el.record.textContent = `Stop (${s.toFixed(1)} s)`; });
    try {
      await mic.start();
    } catch (err) {
      this.say(`The microphone could not start: ${err && err.message ? err.message : err}`, 'rejected');
      await mic.stop().catch(() => {});
      return;
    }
    this.mic = mic;
    this.el.record.setAttribute('aria-pressed', 'true');
    this.el.record.textContent = 'Stop (0.0 s)';
    mic.done.then((samples) => this.recorded(samples));
  }

  async stopRecording() {
    await this.mic?.stop();
  }

  recorded(samples) {
    this.mic = null;
    this.el.record.setAttribute('aria-pressed', 'false');
    this.el.record.textContent = 'Record';
    const seconds = samples.length / RATE;
    if (seconds < this.limits.min_seconds) {
      this.say(`That was ${seconds.toFixed(1)} s; record at least ${this.limits.min_seconds} s.`, 'rejected');
      return;
    }
    this.setTake({ body: new Blob([encodeWav(samples)], { type: 'audio/wav' }), type: 'audio/wav',
      label: `Recorded ${seconds.toFixed(1)} s: ready to upload.` });
  }

  picked(file) {
    this.say('');
    const problem = file ? fileProblem(file, this.limits) : null;
    if (problem) { this.setTake(null); this.say(problem, 'rejected'); return; }
    this.setTake(file ? { body: file, type: file.type, label: `${file.name} (${(file.size / 1024).toFixed(0)} KiB)` } : null);
  }

  async send() {
    const name = this.el.name.value.trim();
    const problem = nameProblem(name, this.names) || (this.take ? null : 'Record or choose a recording first.');
    if (problem) { this.say(problem, 'rejected'); return; }
    this.el.send.disabled = true;
    this.say(`Uploading ${name}…`, 'busy');
    try {
      const result = await uploadVoice({ fetchImpl: this.fetchImpl, token: this.token, name, body: this.take.body,
        contentType: this.take.type });
      if (!result.ok) { this.say(result.error, 'rejected'); return; }
      await this.refresh(result.voice.name);
      this.setTake(null);
      this.el.name.value = '';
      this.el.file.value = '';
      this.say(`Voice ${result.voice.name} added (${result.voice.seconds} s) and selected.`, 'applied');
    } catch (err) {
      this.say(`The upload failed: ${err && err.message ? err.message : err}`, 'rejected');
    } finally {
      this.el.send.disabled = !this.take;
    }
  }

  showRemove() {
    const opt = this.select.selectedOptions && this.select.selectedOptions[0];
    const custom = Boolean(opt && opt.dataset.kind === 'custom' && this.el.panel && !this.el.panel.hidden);
    this.el.remove.hidden = !custom;
    if (custom) this.el.remove.textContent = `Delete voice ${opt.value}`;
  }

  async removeSelected() {
    const name = this.select.value;
    const result = await deleteVoice({ fetchImpl: this.fetchImpl, token: this.token, name });
    if (!result.ok) { this.say(result.error, 'rejected'); return; }
    await this.refresh();
    this.say(`Voice ${name} deleted.`, 'applied');
  }
}
