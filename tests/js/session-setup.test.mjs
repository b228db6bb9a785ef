// The client sets a session up with POST api/sessions and connects with the ticket it gets back. The
// server is a scripted stand-in (a fetch function) here; tests/test_session_tickets.py runs the real one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createSessionUrl, sessionRequest, SessionSetupError } from '../../client/js/core/protocol.js';
import { ChatSession } from '../../client/js/session.js';

const PERSONA = 'أنت بزرا، مساعد يتحدث بهدوء ويجيب بإيجاز. '.repeat(90); // ~3,900 characters
const PARAMS = {
  text_prompt: PERSONA, voice_prompt: 'NATM1.pt', mode: 'auto', text_temperature: '0.7', text_topk: '25',
  audio_temperature: '', audio_topk: '', seed: '', token: 's3cret', record: 0, events: 1,
};

function standInServer(status, answer) {
  const calls = [];
  const fetchFn = async (url, init) => {
    calls.push({ url, init, body: JSON.parse(init.body) });
    return new Response(JSON.stringify(answer), { status, headers: { 'Content-Type': 'application/json' } });
  };
  return { calls, fetchFn };
}

test('the session request is the form minus empty values, the token apart', () => {
  const { body, token } = sessionRequest(PARAMS);
  assert.equal(token, 's3cret');
  assert.ok(!('token' in body) && !('seed' in body) && !('audio_topk' in body));
  assert.equal(body.text_prompt, PERSONA);
  assert.equal(body.record, 0);
  assert.equal(body.events, 1);
});

test('a long persona is POSTed and the WebSocket URL carries only the ticket', async () => {
  const server = standInServer(200, { id: 'tkt_abcdefghijklmnop', url: '/api/chat?session=tkt_abcdefghijklmnop', expires_in: 60 });
  const url = new URL(await createSessionUrl('https://voice.example:8443/bizra/?token=s3cret', PARAMS, server.fetchFn));
  assert.equal(server.calls.length, 1);
  const [{ url: posted, init, body }] = server.calls;
  assert.equal(posted, 'https://voice.example:8443/bizra/api/sessions');
  assert.equal(init.method, 'POST');
  assert.equal(init.headers.Authorization, 'Bearer s3cret');
  assert.equal(body.text_prompt, PERSONA);
  assert.ok(!('token' in body));
  assert.equal(url.protocol, 'wss:');
  assert.equal(url.pathname, '/bizra/api/chat');
  assert.deepEqual([...url.searchParams.keys()], ['session']);
  assert.equal(url.searchParams.get('session'), 'tkt_abcdefghijklmnop');
  assert.ok(url.toString().length < 100);
});

test('a server without api/sessions gets the parameters in the URL, as PersonaPlex clients send them', async () => {
  for (const status of [404, 405, 503]) {
    const server = standInServer(status, { detail: 'Not Found' });
    const url = new URL(await createSessionUrl('http://localhost:8000/', { ...PARAMS, text_prompt: 'Short.' }, server.fetchFn));
    assert.equal(url.searchParams.get('text_prompt'), 'Short.');
    assert.equal(url.searchParams.get('token'), 's3cret');
    assert.ok(!url.searchParams.has('session'));
  }
});

test("a refused session request throws the server's own sentence", async () => {
  const server = standInServer(400, { error: 'Invalid field text_topk (0): Input should be greater than or equal to 1.' });
  await assert.rejects(createSessionUrl('http://localhost:8000/', PARAMS, server.fetchFn),
    (err) => err instanceof SessionSetupError && err.status === 400 && /text_topk/.test(err.message));
  const odd = standInServer(200, { url: '/api/chat' }); // 200 without an id: never a parameterless session
  await assert.rejects(createSessionUrl('http://localhost:8000/', PARAMS, odd.fetchFn), /without a ticket/);
  const offline = async () => { throw new TypeError('fetch failed'); };
  await assert.rejects(createSessionUrl('http://localhost:8000/', PARAMS, offline), /Could not reach the server.*fetch failed/);
});

test('ChatSession opens its WebSocket with the ticket URL, and not at all once cancelled', async () => {
  const opened = [];
  globalThis.WebSocket = class { constructor(url) { opened.push(url); } };
  globalThis.WebSocket.OPEN = 1;
  try {
    const closes = [];
    const handlers = { onClose: (info) => closes.push(info) };
    const server = standInServer(200, { id: 'tkt_abcdefghijklmnop', expires_in: 60 });
    await new ChatSession(handlers).open('http://localhost:8000/', PARAMS, server.fetchFn);
    assert.deepEqual(opened, ['ws://localhost:8000/api/chat?session=tkt_abcdefghijklmnop']);

    const cancelled = new ChatSession(handlers);
    const pending = cancelled.open('http://localhost:8000/', PARAMS, server.fetchFn);
    cancelled.close(); // the user pressed Cancel while the POST was under way
    await pending;
    assert.equal(opened.length, 1);

    const refused = standInServer(401, { error: 'a valid access token is required' });
    await new ChatSession(handlers).open('http://localhost:8000/', PARAMS, refused.fetchFn);
    assert.equal(opened.length, 1);
    assert.equal(closes.length, 1);
    assert.equal(closes[0].wasLive, false);
    assert.match(closes[0].message, /access token is required/);
  } finally {
    delete globalThis.WebSocket;
  }
});
