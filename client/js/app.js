// BIZRA Voice browser client: wires the form, the audio engine, the codec pipeline and the chat
// session together. Each piece lives in its own module; this file only decides what happens when.

import { AudioEngine, describeMicError } from './audio/audio-engine.js';
import { OpusOggEncoder, opusEncoderConfig } from './audio/opus-encoder.js';
import { OggOpusDecoder } from './audio/opus-decoder.js';
import { ChatSession } from './session.js';
import { CallRefused, CallSetupFailed, WebRtcSession } from './webrtc-session.js';
import { concatBytes } from './core/ogg.js';
import { shouldReconnect, voicePromptParam } from './core/protocol.js';
import { EnergyVad } from './core/vad.js';
import { RttMeter } from './core/rtt.js';
import { ConversationLog } from './ui/conversation.js';
import { StatusView } from './ui/status.js';
import { VoiceUploadPanel } from './ui/voice-upload.js';
import { LivePersona } from './ui/live-persona.js';

const $ = (id) => document.getElementById(id);
const ui = {
  form: $('session-form'), connect: $('connect'), voice: $('voice'), mode: $('mode'), persona: $('persona'),
  record: $('record'), ask: $('ask'), askSend: $('ask-send'), askForm: $('ask-form'), error: $('error'),
  devBanner: $('dev-banner'), recording: $('recording'), micLevel: $('mic-level'), sessionInfo: $('session-info'),
  numbers: ['text_temperature', 'text_topk', 'audio_temperature', 'audio_topk', 'seed'].map((id) => $(id)),
};
const log = new ConversationLog($('conversation'));
const status = new StatusView(document);
const livePersona = new LivePersona({ persona: $('persona'), voice: $('voice'), apply: $('persona-apply'), status: $('live-status') });
const pageParams = new URLSearchParams(location.search);

let call = null; // everything that lives for one connection

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

function setBusyControls(busy) {
  const live = Boolean(call && call.session && call.session.live);
  for (const el of [ui.mode, ui.record, ...ui.numbers]) el.disabled = busy;
  for (const el of [ui.voice, ui.persona]) el.disabled = busy && !live; // changed live: ui/live-persona.js
  ui.ask.disabled = ui.askSend.disabled = !live;
  ui.connect.querySelector('.label').textContent = !busy ? 'Connect and talk' : live ? 'Disconnect' : 'Cancel';
}

function sessionParams() {
  const value = (id) => $(id).value.trim();
  return {
    text_prompt: ui.persona.value.trim(),
    voice_prompt: voicePromptParam(ui.voice.value),
    mode: ui.mode.value,
    text_temperature: value('text_temperature'),
    text_topk: value('text_topk'),
    audio_temperature: value('audio_temperature'),
    audio_topk: value('audio_topk'),
    seed: value('seed'),
    token: pageParams.get('token') || undefined,
    record: ui.record.checked ? 1 : 0,
    events: 1,  // our JSON events (0x04); moshi/PersonaPlex clients don't ask for them and get none
  };
}

function capabilityProblem() {
  if (!window.isSecureContext || !navigator.mediaDevices) {
    return 'The microphone needs a secure page: open BIZRA over https:// or on http://localhost.';
  }
  if (typeof AudioEncoder === 'undefined' || typeof AudioDecoder === 'undefined' || typeof AudioWorkletNode === 'undefined') {
    return 'This browser lacks WebCodecs audio or AudioWorklet. Use a current Chrome, Edge, Firefox or Safari.';
  }
  return null;
}

async function connect(reconnects = 0) {
  showError('');
  const problem = capabilityProblem();
  if (problem) { status.setState('error', 'Cannot start'); showError(problem); return; }
  const params = sessionParams();
  if (!params.text_prompt) { showError('The persona is empty: describe who BIZRA should be.'); ui.persona.focus(); return; }

  const c = {
    engine: new AudioEngine(), vad: new EnergyVad(), rtt: new RttMeter(), encoder: null, decoder: null,
    session: null, userClosed: false, reconnects, framesSent: 0, framesReceived: 0, bufferMs: 0, flushes: 0, underruns: 0, tickMs: null,
  };
  call = c;
  log.clear();
  ui.sessionInfo.textContent = '';
  status.setState('connecting', 'Starting the microphone…');
  setBusyControls(true);

  try {
    await c.engine.start();
  } catch (err) {
    await teardown(c);
    status.setState('error', 'Microphone unavailable');
    showError(err.name ? describeMicError(err) : String(err.message || err));
    return;
  }
  if (call !== c) return; // cancelled while the permission prompt was open
  c.engine.onFrame = (frame) => onMicFrame(c, frame);
  // WebRTC by default (Opus over RTP, the echo canceller's own path); the WebSocket when it cannot be used
  if (pageParams.get('transport') !== 'websocket' && await startCall(c, params)) return;
  if (call !== c) return;
  await connectWebSocket(c, params);
}

/** The conversation as a WebRTC call; false when WebRTC cannot carry it (the WebSocket is tried next). */
async function startCall(c, params) {
  const session = new WebRtcSession({
    onHandshake: () => onLive(c),
    onText: (piece) => log.assistantText(piece),
    onEvent: (ev) => onServerEvent(c, ev),
    onServerError: (text) => showError(`Server error: ${text}`),
    onClose: (info) => onClosed(c, info),
  });
  c.session = session;
  c.transport = 'webrtc';
  status.setState('waiting', 'Calling: BIZRA is reading its persona…');
  try {
    await session.open(location.href, params, c.engine.stream);
    document.body.dataset.transport = 'webrtc';
    document.body.dataset.playback = 'webrtc-call';
    return true;
  } catch (err) {
    if (call !== c) return true; // cancelled meanwhile
    if (err instanceof CallSetupFailed) {
      log.note(`WebRTC could not start (${err.message}); talking over the WebSocket instead.`);
      c.session = null;
      return false;
    }
    await onClosed(c, { code: err instanceof CallRefused ? err.closeCode : 0, message: err.message, wasLive: false });
    return true;
  }
}

async function connectWebSocket(c, params) {
  c.transport = 'websocket';
  document.body.dataset.transport = 'websocket';
  let encoderConfig;
  try {
    encoderConfig = await opusEncoderConfig();
    await c.engine.startPlayback();
  } catch (err) {
    await teardown(c);
    status.setState('error', 'Audio unavailable');
    showError(String(err.message || err));
    return;
  }
  if (call !== c) return;
  const route = c.engine.route;
  document.body.dataset.playback = route.path;
  if (route.path !== 'webrtc-loopback') {
    log.note(`Playback goes straight to the speakers: ${route.reason}. The echo canceller may not cover the `
      + 'assistant\'s voice; use headphones so it does not hear itself.');
  }

  c.decoder = new OggOpusDecoder((samples, rate) => {
    c.engine.play(samples, rate);
    c.rtt.onFramesDecoded(c.decoder.framesDecoded, performance.now());
  }, (err) => fail(c, `Audio decoding failed: ${err.message}`));
  c.engine.onPlaybackStats = (s) => { c.bufferMs = s.bufferedMs; c.flushes = s.flushes; c.underruns = s.underruns; };

  c.session = new ChatSession({
    onHandshake: () => {
      c.encoder = new OpusOggEncoder(encoderConfig, (pages) => {
        if (c.session.sendAudio(concatBytes(pages))) c.rtt.onFrameSent(c.framesSent++, performance.now());
      }, (err) => fail(c, `Audio encoding failed: ${err.message}`));
      onLive(c);
    },
    onAudio: (bytes) => { c.framesReceived++; c.decoder.push(bytes); },
    onText: (piece) => log.assistantText(piece),
    onEvent: (ev) => onServerEvent(c, ev),
    onServerError: (text) => showError(`Server error: ${text}`),
    onClose: (info) => onClosed(c, info),
  });
  status.setState('waiting', 'Connecting: BIZRA is reading its persona…');
  c.session.open(location.href, params);
}

/** The session is live (handshake, or the call's session.created): speak any time, change persona live. */
function onLive(c) {
  c.reconnects = 0; // a live session again: later losses get their own retries
  status.setState('connected', c.transport === 'webrtc' ? 'Connected over WebRTC: speak any time' : 'Connected: speak any time');
  setBusyControls(true);
  livePersona.attach((ev) => c.session.sendEvent(ev));
}

function onMicFrame(c, frame) {
  const { onset, db } = c.vad.process(frame);
  ui.micLevel.value = Math.max(-70, db);
  if (!c.session || !c.session.live || !c.encoder) return; // nothing may be sent before the handshake
  // Barge-in: the user started speaking, so stop BIZRA's queued speech now rather than one RTT later.
  if (onset && c.bufferMs > 0) c.engine.flush();
  c.encoder.encode(frame);
}

function onServerEvent(c, ev) {
  if (livePersona.onServerEvent(ev)) return; // the answer to a live persona/voice change
  switch (ev.type) {
    case 'session.started':
      ui.devBanner.hidden = !ev.cpu_dev_profile;
      ui.sessionInfo.textContent = [
        ev.voice && `Voice ${ev.voice}`, ev.mode && `mode ${ev.mode}`, ev.reason,
        ev.replica != null && `replica ${ev.replica}`, ev.slot != null && `slot ${ev.slot}`,
      ].filter(Boolean).join(' · ');
      break;
    case 'session.stats': c.tickMs = ev.tick_ms_p50 ?? ev.engine?.tick_ms_p50 ?? c.tickMs; break;
    case 'client.pong': c.rtt.onPong(Number(ev.t), performance.now()); break;
    case 'transcript.user': if (ev.text) log.user(ev.text); break;
    case 'router.decision': log.router(ev); break;
    case 'knowledge.answer': log.knowledgeAnswer(ev); break;
    case 'tool.call': case 'tool.result': log.tool(ev); break;
    // Nothing the user sent may vanish silently: say what the server could not take, and why.
    case 'user.text.rejected': log.note(`Your message was not sent: ${ev.reason}.`); break;
    case 'server.notice': log.note(`The server said: ${ev.reason}`); break;
    case 'transcript.error': log.note(`What you just said could not be transcribed: ${ev.reason}.`); break;
    case 'session.draining':
      log.note(`The server is restarting this replica (${ev.reason}); reconnecting in ${ev.closing_in_s ?? 0} s…`);
      break;
    case 'recording': ui.recording.hidden = !ev.on; break;
    case 'playback.flush': c.engine.flush(); break;
    default: break; // newer servers may send more; older clients must not break on them
  }
}

function fail(c, message) {
  showError(message);
  c.failed = true;
  c.session?.close();
}

async function onClosed(c, { code, message, wasLive }) {
  await teardown(c);
  if (c.userClosed) { status.setState('closed', 'Disconnected'); return; }
  if (c.failed) { status.setState('error', 'Stopped after an error'); return; }
  if (shouldReconnect(code, wasLive, c.reconnects)) {
    // The replica went away; a new session lands on a healthy one. The persona and voice are re-sent.
    status.setState('connecting', `${message || 'Connection lost.'} Reconnecting…`);
    setTimeout(() => { if (!call) connect(c.reconnects + 1); }, 1000 * (c.reconnects + 1));
    return;
  }
  if (message) {
    status.setState('error', wasLive ? 'Connection ended' : 'Could not connect');
    showError(message);
  } else {
    status.setState('closed', 'Session ended');
  }
}

async function teardown(c) {
  c.encoder?.close();
  c.decoder?.close();
  await c.engine.stop();
  if (call === c) { call = null; livePersona.detach(); setBusyControls(false); }
}

async function disconnect() {
  const c = call;
  if (!c) return;
  c.userClosed = true;
  if (c.session && c.session.ws) c.session.close();
  else { c.session?.close(); await teardown(c); status.setState('closed', 'Disconnected'); } // also stops a setup under way
}

ui.form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  if (call) disconnect(); else connect();
});

ui.askForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = ui.ask.value.trim();
  if (!text || !call || !call.session.sendEvent({ type: 'user.text', text })) return;
  log.user(text, { typed: true });
  ui.ask.value = '';
});

/** A call's counters from getStats: 80 ms frames from 20 ms RTP packets, the round trip from ICE/RTCP. */
async function callCounters(c) {
  const s = await c.session.stats().catch(() => null);
  if (!s || call !== c) return;
  c.framesSent = Math.floor(s.packetsSent / 4);
  c.framesReceived = Math.floor(s.packetsReceived / 4);
  if (s.rttMs != null) c.callRttMs = s.rttMs;
  document.body.dataset.rtpPacketsReceived = s.packetsReceived;
}

setInterval(() => {
  const c = call;
  const onCall = Boolean(c && c.transport === 'webrtc' && c.session?.live);
  if (onCall) callCounters(c);
  status.update({
    framesSent: c ? c.framesSent : Number(document.body.dataset.framesSent),
    framesReceived: c ? c.framesReceived : Number(document.body.dataset.framesReceived),
    framesDecoded: onCall ? c.framesReceived : c && c.decoder ? c.decoder.framesDecoded : Number(document.body.dataset.framesDecoded),
    rttMs: onCall ? (c.callRttMs ?? null) : c ? c.rtt.rttMs : (document.body.dataset.rttMs || null),
    rttSource: onCall ? 'webrtc' : c ? c.rtt.source : null,
    bufferMs: c ? c.bufferMs : 0,
    textChars: log.textChars,
    flushes: c ? c.flushes : Number(document.body.dataset.flushes),
    underruns: c ? c.underruns : Number(document.body.dataset.underruns),
    tickMs: c ? c.tickMs : null,
  });
  c?.engine.route?.stats().then((s) => {
    if (!s) return;
    document.body.dataset.playbackPackets = s.packets;
    if (s.delayMs != null) document.body.dataset.playbackDelayMs = Math.round(s.delayMs);
  }).catch(() => { /* the call ended meanwhile */ });
}, 250);

async function loadServerInfo() {
  // The voice list (custom voices marked) and, when the server allows it, uploading one: ui/voice-upload.js
  await new VoiceUploadPanel({ select: ui.voice, token: pageParams.get('token') || undefined }).refresh(null);
  try {
    const res = await fetch('api/health');
    if (res.ok) ui.devBanner.hidden = !(await res.json()).cpu_dev_profile;
  } catch { /* health is informational */ }
}

loadServerInfo();
