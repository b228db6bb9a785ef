import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LivePersona, describeAnswer, promptUpdate } from '../../client/js/ui/live-persona.js';

const applied = { persona: 'You are BIZRA.', voice: 'NATM1' };

test('an update carries only what changed, trimmed, with its event id', () => {
  assert.deepEqual(promptUpdate({ persona: '  أنت بزرا، مساعد ودود.  ' }, applied, 'live-1'),
    { type: 'session.update', event_id: 'live-1', text_prompt: 'أنت بزرا، مساعد ودود.' });
  assert.deepEqual(promptUpdate({ voice: 'NATF1' }, applied, 'live-2'),
    { type: 'session.update', event_id: 'live-2', voice_prompt: 'NATF1' });
  assert.deepEqual(promptUpdate({ persona: 'Be brief.', voice: 'VARF0' }, applied, 'live-3'),
    { type: 'session.update', event_id: 'live-3', text_prompt: 'Be brief.', voice_prompt: 'VARF0' });
});

test('nothing to send when nothing changed; an empty persona is refused before it is sent', () => {
  assert.equal(promptUpdate({ persona: ' You are BIZRA. ' }, applied, 'x'), null);
  assert.equal(promptUpdate({ voice: 'NATM1' }, applied, 'x'), null);
  assert.equal(promptUpdate({ voice: '' }, applied, 'x'), null);
  assert.match(promptUpdate({ persona: '   ' }, applied, 'x').error, /persona is empty/);
});

test('answers are told in words: prefill time, the voice, or the reason', () => {
  const persona = { text_prompt: 'Be brief.' };
  assert.deepEqual(describeAnswer({ type: 'session.updated', changed: ['text_prompt'], prefill_ms: 21.4 }, persona),
    { ok: true, text: 'Persona updated live in 21 ms, no reconnect.' });
  assert.equal(describeAnswer({ type: 'session.updated', voice: 'NATF1', prefill_ms: 16.6 }, { voice_prompt: 'NATF1' }).text,
    'Voice updated live in 17 ms (voice NATF1), no reconnect.');
  const both = describeAnswer({ type: 'session.updated', voice: 'NATF1' }, { text_prompt: 'a', voice_prompt: 'NATF1' });
  assert.equal(both.text, 'Persona and voice updated live (voice NATF1), no reconnect.');
  assert.deepEqual(describeAnswer({ type: 'session.update.rejected', reason: "Unknown voice 'NOPE'." },
    { voice_prompt: 'NOPE' }), { ok: false, text: "Voice not changed: Unknown voice 'NOPE'." });
});

function element(value = '') {
  const el = new EventTarget();
  Object.assign(el, { value, disabled: false, hidden: false, textContent: '', dataset: {} });
  return el;
}

function controller() {
  const el = { persona: element('You are BIZRA.'), voice: element('NATM1'), apply: element(), status: element() };
  const sent = [];
  const live = new LivePersona(el);
  return { el, sent, live, attach: () => live.attach((ev) => { sent.push(ev); return true; }) };
}

test('while connected: Apply sends the edited persona, the answer updates the status and what is applied', () => {
  const { el, sent, live, attach } = controller();
  assert.equal(el.apply.hidden, true); // not connected: no live changes
  el.voice.value = 'NATF0';
  el.voice.dispatchEvent(new Event('change'));
  assert.deepEqual(sent, []); // the next connection will use it
  el.voice.value = 'NATM1';
  attach();
  assert.equal(el.apply.hidden, false);
  assert.equal(el.apply.disabled, true); // nothing edited yet
  el.persona.value = 'You are a baker.';
  el.persona.dispatchEvent(new Event('input'));
  assert.equal(el.apply.disabled, false);
  el.apply.dispatchEvent(new Event('click'));
  assert.deepEqual(sent, [{ type: 'session.update', event_id: 'live-1', text_prompt: 'You are a baker.' }]);
  assert.equal(el.apply.disabled, true); // until it is answered
  assert.equal(el.status.dataset.state, 'pending');
  assert.equal(live.onServerEvent({ type: 'session.updated', event_id: 'other' }), false); // not ours
  assert.equal(live.onServerEvent({ type: 'session.updated', event_id: 'live-1', prefill_ms: 30 }), true);
  assert.equal(el.status.textContent, 'Persona updated live in 30 ms, no reconnect.');
  assert.equal(el.status.dataset.applied, '1');
  assert.equal(el.apply.disabled, true); // the box now says what the session has
  assert.equal(live.onServerEvent({ type: 'session.started' }), false);
});

test('a refused voice puts the picker back on the voice the session still has', () => {
  const { el, sent, live, attach } = controller();
  attach();
  el.voice.value = 'NOPE';
  el.voice.dispatchEvent(new Event('change'));
  assert.deepEqual(sent, [{ type: 'session.update', event_id: 'live-1', voice_prompt: 'NOPE' }]);
  live.onServerEvent({ type: 'session.update.rejected', event_id: 'live-1', reason: "Unknown voice 'NOPE'." });
  assert.equal(el.voice.value, 'NATM1');
  assert.equal(el.status.dataset.state, 'rejected');
  assert.match(el.status.textContent, /^Voice not changed: Unknown voice 'NOPE'/);
  el.voice.value = 'NATF1';
  el.voice.dispatchEvent(new Event('change'));
  live.onServerEvent({ type: 'session.updated', event_id: 'live-2', voice: 'NATF1', prefill_ms: 12 });
  assert.equal(live.applied.voice, 'NATF1');
  live.detach();
  assert.equal(el.apply.hidden, true);
  el.voice.value = 'NATF2';
  el.voice.dispatchEvent(new Event('change'));
  assert.equal(sent.length, 2); // after the session: nothing is sent
});
