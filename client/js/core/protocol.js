// Moshi/PersonaPlex wire protocol: every binary WebSocket message is one kind byte + payload.
// Kept byte-compatible with moshi's server so this client also talks to PersonaPlex itself.

export const Kind = Object.freeze({
  HANDSHAKE: 0x00,
  AUDIO: 0x01,
  TEXT: 0x02,
  CONTROL: 0x03,
  METADATA: 0x04,
  ERROR: 0x05,
  PING: 0x06,
});

const KIND_NAMES = Object.fromEntries(Object.entries(Kind).map(([k, v]) => [v, k.toLowerCase()]));

const utf8Encoder = new TextEncoder();

/** Prefix `payload` (Uint8Array) with the kind byte. */
export function encodeMessage(kind, payload = new Uint8Array(0)) {
  const out = new Uint8Array(1 + payload.length);
  out[0] = kind;
  out.set(payload, 1);
  return out;
}

export const encodeAudio = (oggBytes) => encodeMessage(Kind.AUDIO, oggBytes);
export const encodeMetadata = (obj) => encodeMessage(Kind.METADATA, utf8Encoder.encode(JSON.stringify(obj)));

/**
 * Split a received binary message into {kind, name, payload}. Text, error and metadata payloads are
 * decoded here so the caller never touches UTF-8; a malformed metadata JSON is reported as `error`.
 */
export function decodeMessage(buffer) {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  if (bytes.length === 0) throw new Error('empty message');
  const kind = bytes[0];
  const payload = bytes.subarray(1);
  const name = KIND_NAMES[kind];
  if (name === undefined) throw new Error(`unknown message kind 0x${kind.toString(16).padStart(2, '0')}`);
  const msg = { kind, name, payload };
  if (kind === Kind.TEXT || kind === Kind.ERROR) {
    // A fresh decoder per message: the server sends whole UTF-8 pieces, never split code points.
    msg.text = new TextDecoder('utf-8').decode(payload);
  } else if (kind === Kind.METADATA) {
    const raw = new TextDecoder('utf-8').decode(payload);
    try {
      msg.json = JSON.parse(raw);
    } catch {
      msg.json = null;
      msg.raw = raw;
    }
  }
  return msg;
}

/** Is this exactly the handshake message b"\x00"? */
export const isHandshake = (bytes) => bytes.length === 1 && bytes[0] === Kind.HANDSHAKE;

/**
 * Build the /api/chat WebSocket URL next to the page that serves the client, so the same files work
 * behind any host, port or path prefix. `pageUrl` is `location.href`.
 */
export function buildChatUrl(pageUrl, params) {
  const url = new URL('api/chat', pageUrl);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  url.hash = '';
  url.search = '';
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === '') continue;
    url.searchParams.set(key, String(value));
  }
  return url.toString();
}

/**
 * Split the form's session parameters into the JSON body of POST /api/sessions (empty values left out,
 * so the server's defaults apply) and the access token, which travels as a header, never in the body.
 */
export function sessionRequest(params) {
  const { token, ...rest } = params;
  const body = {};
  for (const [key, value] of Object.entries(rest)) {
    if (value === undefined || value === null || value === '') continue;
    body[key] = value;
  }
  return { body, token: token || null };
}

/** HTTP answers meaning "this server sets up no sessions by POST" (PersonaPlex's own server, or tickets
 * not deployed): then the parameters go in the WebSocket URL as before. */
export const NO_SESSION_SETUP = Object.freeze([404, 405, 501, 503]);

export class SessionSetupError extends Error {
  constructor(message, status = 0) { super(message); this.name = 'SessionSetupError'; this.status = status; }
}

/**
 * The WebSocket URL of a new session: POST the request to api/sessions (next to the page) and connect with
 * the single-use ticket it returns, so a persona of any length fits and the long-lived token stays out of
 * the URL. `fetchFn` is `fetch` (a stand-in in tests). A refusal (bad value, 401, 413, ...) throws a
 * SessionSetupError carrying the server's sentence.
 */
export async function createSessionUrl(pageUrl, params, fetchFn = globalThis.fetch) {
  const { body, token } = sessionRequest(params);
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetchFn(new URL('api/sessions', pageUrl).toString(), { method: 'POST', headers, body: JSON.stringify(body) });
  } catch (err) {
    throw new SessionSetupError(`Could not reach the server to set up the session (${err.message || err}).`);
  }
  if (res.ok) {
    const ticket = await res.json().catch(() => null);
    if (!ticket || typeof ticket.id !== 'string' || !ticket.id) {
      throw new SessionSetupError('The server answered the session request without a ticket.', res.status);
    }
    return buildChatUrl(pageUrl, { session: ticket.id });
  }
  if (NO_SESSION_SETUP.includes(res.status)) return buildChatUrl(pageUrl, params);
  let said = null;
  try { said = (await res.json()).error; } catch { /* not JSON: the status says enough */ }
  throw new SessionSetupError(said || `The server refused the session (HTTP ${res.status}).`, res.status);
}

/** PersonaPlex's clients name preset voices by their file ("NATM1.pt"); a bare name is also accepted. */
export function voicePromptParam(voice) {
  if (!voice) return '';
  return /\.(pt|wav)$/i.test(voice) ? voice : `${voice}.pt`;
}

/**
 * Whether a session that ended this way should reconnect by itself: the replica went away (killed: 1006,
 * drained or scaled down: 1001 / 1012) after the session was live. Another replica will take the new
 * session, so a few quick retries beat asking the user.
 */
export const RECONNECT_CODES = Object.freeze([1001, 1006, 1012]);
export const MAX_RECONNECTS = 3;

export function shouldReconnect(code, wasLive, attempts) {
  return wasLive && RECONNECT_CODES.includes(code) && attempts < MAX_RECONNECTS;
}

/** Close codes the server uses, in words a person can act on. */
export function describeClose(code, reason) {
  const why = reason ? `: ${reason}` : '';
  switch (code) {
    case 1000: return null;
    case 1008: return `The server rejected the request${why || ' (bad request)'}.`;
    case 1013: return 'BIZRA is at capacity: every session slot is busy. Try again in a minute.';
    case 1011: return `Server error${why || ' (internal)'}.`;
    case 4401: return `Not authorized${why}. Open this page with a valid ?token=… in its address.`;
    case 1006: return 'Connection lost (the server closed it without a reason, or could not be reached).';
    case 1001: case 1012: return `The server is restarting this replica${why}.`;
    case 4403: return `This page's origin is not allowed by the server${why}.`;
    case 4408: return `The connection fell too far behind${why}.`;
    default: return `Connection closed (code ${code})${why}.`;
  }
}
