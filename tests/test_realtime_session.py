"""One /v1/realtime connection in this process: the real tiny engine (EngineRuntime, no Ray), the real
RealtimeSession, and a scripted client on an in-memory socket (the network boundary).

What is checked: every end the server causes reaches the client as an ``error`` event with its code and
the right close code, and is logged with the session id (engine fell behind -> 1013, engine error -> 1011,
drain -> 1001, bad session request -> 1008); bursts and audio sent while the engine session opens are
paced into the engine, none dropped; a burst past the bound is an ``error`` (the excess refused), not an
end; response.create's metadata comes back; the socket is read while the engine session opens.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any

import numpy as np
import pytest

from bizra_voice.config import AppConfig
from bizra_voice.constants import FRAME_SIZE, SAMPLE_RATE
from bizra_voice.engine.api import SamplingParams
from bizra_voice.engine.config import EngineConfig
from bizra_voice.engine.runtime import EngineRuntime
from bizra_voice.serve.realtime_session import RealtimeSession
from bizra_voice.serve.session_tap import TappedLive
from bizra_voice.session_params import SessionParams
from tests._tiny import SPEECH_WAV, tiny_checkpoint

WAIT_S = 60.0  # generous bound for anything awaited (this machine is shared and slow)


@pytest.fixture(scope="module")
def runtime():
    rt = EngineRuntime.create(EngineConfig(checkpoint=str(tiny_checkpoint()), device="cpu", slots=2,
                                           admission_window_s=0))
    yield rt
    rt.shutdown()


class RecordedMetrics:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def rejected(self, endpoint: str, why: str) -> None:
        self.calls.append(("rejected", endpoint, why))

    def started(self, endpoint: str, ms: float) -> None:
        self.calls.append(("started", endpoint))

    def first_audio(self, endpoint: str, ms: float) -> None:
        self.calls.append(("first_audio", endpoint))


class GatedRuntime:
    """The real runtime; ``open_session`` waits for ``gate`` (the test decides how long an open takes)."""

    def __init__(self, runtime: EngineRuntime) -> None:
        self._runtime = runtime
        self.gate = asyncio.Event()
        self.gate.set()
        self.opening = asyncio.Event()
        self.opened = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    async def open_session(self, spec):
        self.opening.set()
        await self.gate.wait()
        live = await self._runtime.open_session(spec)
        self.opened.set()
        return live


class InProcessHost:
    """What a RealtimeSession uses of its VoiceServer, with the engine in this process and no router,
    Qwen or Transcriber deployed."""

    def __init__(self, runtime: EngineRuntime, config: AppConfig | None = None) -> None:
        self.runtime = GatedRuntime(runtime)
        self.config = config or AppConfig()
        self.engine_config = runtime.config
        self.metrics = RecordedMetrics()
        self.router = self.qwen = self.transcriber = None
        self.dropped: list[tuple[int, int]] = []
        self.router_gate = asyncio.Event()  # the router's answer (the last step of an open) waits for it
        self.router_gate.set()

    async def _decide(self, requested: str) -> dict[str, Any]:
        await self.router_gate.wait()
        return {"mode": "standalone", "reason": "no router in this test"}

    def _sampling(self, params: SessionParams) -> SamplingParams:
        return SamplingParams(**params.sampling_kwargs())

    def _capacity_message(self, refusal: str | None = None) -> str:
        return f"The server is at capacity: {refusal}"

    def _input_dropped_reporter(self, endpoint: str, out: Any):
        def report(dropped: int, total: int) -> None:
            self.dropped.append((dropped, total))
            asyncio.ensure_future(out.event({"type": "session.input_dropped", "frames": dropped}))

        return report

    def bind_session_logs(self, session_id: str) -> None:
        pass

    def start_recording(self, session_id: str, requested: bool, endpoint: str, meta: dict[str, Any]) -> None:
        return None

    def tap_session(self, live: Any, recorder: Any, on_first_output: Any) -> TappedLive:
        return TappedLive(live, recorder, on_first_output)


class MemorySocket:
    """The client end of the connection, in memory: what the test sends, every event and the close it gets."""

    def __init__(self, query: dict[str, str] | None = None) -> None:
        self.query_params = query or {}
        self.headers: dict[str, str] = {}
        self._inbox: asyncio.Queue = asyncio.Queue()
        self.events: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason = ""

    # the server's side (the subset of Starlette's WebSocket that RealtimeSession uses)
    async def receive(self) -> dict[str, Any]:
        return await self._inbox.get()

    async def send_text(self, text: str) -> None:
        if self.close_code is not None:
            raise RuntimeError("the socket is closed")
        self.events.append(json.loads(text))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_code, self.close_reason = code, reason
        self._inbox.put_nowait({"type": "websocket.disconnect", "code": code})

    # the client's side
    def send(self, **event: Any) -> None:
        self._inbox.put_nowait({"type": "websocket.receive", "text": json.dumps(event)})

    def append(self, pcm: np.ndarray, event_id: str | None = None) -> None:
        data = base64.b64encode((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes()).decode()
        self.send(type="input_audio_buffer.append", audio=data, **({"event_id": event_id} if event_id else {}))

    def leave(self) -> None:
        self._inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def until(self, predicate, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not predicate():
            assert time.monotonic() < deadline, f"{what} did not happen within {WAIT_S} s: " \
                f"{[e['type'] for e in self.events if 'delta' not in e['type']][-12:]}, close {self.close_code}"
            await asyncio.sleep(0.02)


def speech(seconds: float) -> np.ndarray:
    import sphn

    pcm, sr = sphn.read(str(SPEECH_WAV))
    assert sr == SAMPLE_RATE
    return np.asarray(pcm[0, : int(seconds * SAMPLE_RATE)], np.float32)


def connect(host: InProcessHost, query: dict[str, str] | None = None) -> tuple[RealtimeSession, MemorySocket]:
    ws = MemorySocket(query)
    return RealtimeSession(host, ws, SessionParams.from_query(ws.query_params), time.monotonic()), ws


async def stream_real_time(ws: MemorySocket, seconds: float, stop: asyncio.Event | None = None) -> None:
    """Appends of 80 ms of speech-like audio every 80 ms (a real-time client)."""
    pcm = np.resize(speech(3.0), int(seconds * SAMPLE_RATE))
    start = time.monotonic()
    for k, at in enumerate(range(0, pcm.size, FRAME_SIZE)):
        if ws.close_code is not None or (stop is not None and stop.is_set()):
            return
        ws.append(pcm[at:at + FRAME_SIZE])
        await asyncio.sleep(max(0.0, start + (k + 1) * FRAME_SIZE / SAMPLE_RATE - time.monotonic()))


def assert_server_ended(ws: MemorySocket, close_code: int, code: str) -> dict[str, Any]:
    errors = ws.of("error")
    assert errors, [e["type"] for e in ws.events][-10:]
    assert (ws.close_code, errors[-1]["error"]["code"]) == (close_code, code), (ws.close_code, errors[-1])
    assert errors[-1]["error"]["message"] and ws.close_reason
    return errors[-1]


def test_engine_fell_behind_is_told_1013_and_logged(runtime, monkeypatch, serve_log):
    """The engine steps slower than real time and stays behind past behind_grace_s."""
    monkeypatch.setattr(runtime.config, "behind_grace_s", 0.4)
    monkeypatch.setattr(runtime.config, "behind_frames", 2)
    tick = runtime.engine.tick

    def slow_tick(*args, **kwargs):
        time.sleep(0.25)  # three frames of audio arrive per step: it can only fall behind
        return tick(*args, **kwargs)

    monkeypatch.setattr(runtime.engine, "tick", slow_tick)
    serve_log.set_level(logging.WARNING, logger="ray.serve")

    async def scenario():
        session, ws = connect(InProcessHost(runtime))
        task = asyncio.create_task(session.run())
        feeder = asyncio.create_task(stream_real_time(ws, 30.0))
        await asyncio.wait_for(task, WAIT_S)
        feeder.cancel()
        return session, ws

    session, ws = asyncio.run(scenario())
    error = assert_server_ended(ws, 1013, "server_overloaded")
    assert "behind" in error["error"]["message"]
    assert runtime.active_sessions == 0
    ended = [r for r in serve_log.records if "ended by the server: close 1013" in r.getMessage()]
    assert ended and session.engine.session_id in ended[0].getMessage()


def test_engine_error_is_told_1011(runtime, monkeypatch):
    def broken_tick(*args, **kwargs):
        raise RuntimeError("a model step failed")

    monkeypatch.setattr(runtime.engine, "tick", broken_tick)

    async def scenario():
        session, ws = connect(InProcessHost(runtime))
        task = asyncio.create_task(session.run())
        feeder = asyncio.create_task(stream_real_time(ws, 10.0))
        await asyncio.wait_for(task, WAIT_S)
        feeder.cancel()
        return ws

    ws = asyncio.run(scenario())
    error = assert_server_ended(ws, 1011, "engine_error")
    assert "RuntimeError" in error["error"]["message"]


def test_drain_warns_then_closes_1001_and_a_response_in_progress_fails(runtime):
    async def scenario():
        session, ws = connect(InProcessHost(runtime))
        task = asyncio.create_task(session.run())
        feeder = asyncio.create_task(stream_real_time(ws, 20.0))
        ws.send(type="response.create", event_id="evt_r", response={"metadata": {"k": "v"}})
        await ws.until(lambda: ws.of("response.output_audio.delta"), "audio")
        handle = session.drain_handle()  # what VoiceServer.drain does
        await handle.event({"type": "session.draining", "reason": "replica stopping", "closing_in_s": 0})
        await handle.fail("The server ended the session: replica stopping; reconnect.", 1001)
        await asyncio.wait_for(task, WAIT_S)
        feeder.cancel()
        return ws

    ws = asyncio.run(scenario())
    assert ws.of("bizra.session.draining")[0]["reason"] == "replica stopping"
    assert_server_ended(ws, 1001, "server_draining")
    failed = ws.of("response.done")[-1]["response"]
    assert failed["status"] == "failed" and failed["status_details"]["error"]["code"] == "server_draining"
    assert runtime.active_sessions == 0


def test_unknown_voice_prompt_is_refused_1008_and_unknown_session_voice_is_an_error(runtime):
    async def scenario():
        session, ws = connect(InProcessHost(runtime), {"voice_prompt": "NOPE"})
        await asyncio.wait_for(session.run(), WAIT_S)
        session2, ws2 = connect(InProcessHost(runtime))
        task = asyncio.create_task(session2.run())
        ws2.send(type="session.update", event_id="evt_v", session={"type": "realtime",
                                                                    "audio": {"output": {"voice": "NOPE"}}})
        await ws2.until(lambda: ws2.of("error"), "the refusal")
        ws2.leave()
        await asyncio.wait_for(task, WAIT_S)
        return ws, ws2

    ws, ws2 = asyncio.run(scenario())
    error = assert_server_ended(ws, 1008, "invalid_session")
    assert "NOPE" in error["error"]["message"] and not ws.of("session.created")
    refused = ws2.of("error")[0]["error"]
    assert (refused["param"], refused["event_id"]) == ("session.audio.output.voice", "evt_v")
    assert ws2.close_code == 1000  # the client left; the refusal did not end the session


def test_audio_sent_while_the_engine_opens_and_a_burst_are_paced_in_none_dropped(runtime):
    """The open is held (as a slow machine's ~2 s prefill would): the socket is still read, session.update
    is answered (a persona change asked during the open waits for it, then applies live) and
    response.create's response is created; then every appended frame is played into the engine, at its
    pace, and the runtime drops none."""

    async def scenario():
        host = InProcessHost(runtime)
        host.runtime.gate.clear()
        session, ws = connect(host)
        task = asyncio.create_task(session.run())
        ws.send(type="session.update", session={"type": "realtime", "audio": {"output": {"voice": "marin"}}})
        ws.append(speech(3.0), event_id="evt_burst")  # 3 s in one append
        ws.send(type="session.update", event_id="evt_late", session={"type": "realtime", "instructions": "x"})
        ws.send(type="response.create", event_id="evt_rc",
                response={"metadata": {"client_event_id": "evt_rc"}})
        await ws.until(lambda: ws.of("response.created") and ws.of("session.updated"), "answers during the open")
        assert not host.runtime.gate.is_set()  # all of this while the engine session was still opening
        assert len(ws.of("session.updated")) == 1  # the persona change waits for the session it changes
        opened_after = time.monotonic()
        host.runtime.gate.set()
        frames = 3 * SAMPLE_RATE // FRAME_SIZE
        await ws.until(lambda: session.engine.frames_out >= frames and len(ws.of("session.updated")) == 2,
                       "every frame played and answered, and the persona changed")
        played_s = time.monotonic() - opened_after
        live = session.engine.live
        dropped, pushed, early = live.input_frames_dropped, live.frames_in, session.engine.pacer.frames_early
        ws.leave()
        await asyncio.wait_for(task, WAIT_S)
        return ws, dropped, pushed, early, played_s

    ws, dropped, pushed, early, played_s = asyncio.run(scenario())
    print(f"\n3 s burst sent during the open: played in {played_s:.2f} s, {early} frames early "
          f"(into a caught-up engine), {dropped} dropped")
    assert (dropped, pushed) == (0, 3 * SAMPLE_RATE // FRAME_SIZE)
    assert ws.of("response.created")[0]["response"]["metadata"] == {"client_event_id": "evt_rc"}
    marin, late = ws.of("session.updated")
    assert marin["session"]["audio"]["output"]["voice"] == "marin" and "bizra" not in marin
    assert late["session"]["instructions"] == "x" and late["bizra"]["event_id"] == "evt_late"
    assert late["bizra"]["changed"] == ["session.instructions"]
    assert not ws.of("error") and ws.close_code == 1000


def test_a_burst_past_the_bound_is_an_error_not_an_end(runtime):
    config = AppConfig.model_validate({"realtime": {"max_buffered_audio_s": 2.0}})

    async def scenario():
        host = InProcessHost(runtime, config)
        host.runtime.gate.clear()  # nothing is played yet: the bound is hit exactly
        session, ws = connect(host)
        task = asyncio.create_task(session.run())
        ws.append(speech(3.0), event_id="evt_big")
        await ws.until(lambda: ws.of("error"), "the refusal")
        host.runtime.gate.set()
        await ws.until(lambda: session.engine.frames_out >= 25, "the accepted 2 s played")
        ws.send(type="response.create", event_id="evt_after")
        await ws.until(lambda: ws.of("response.created"), "the session goes on")
        ws.leave()
        await asyncio.wait_for(task, WAIT_S)
        return session, ws

    session, ws = asyncio.run(scenario())
    refused = ws.of("error")[0]["error"]
    assert (refused["code"], refused["event_id"], refused["param"]) == ("input_audio_buffer_full", "evt_big",
                                                                        "audio")
    assert "1.00 s" in refused["message"] and "2 s" in refused["message"]
    assert session.engine.frames_in == 25 and session.engine.live.input_frames_dropped == 0
    assert len(ws.of("error")) == 1 and ws.close_code == 1000


def test_response_create_and_cancel_over_the_connection(runtime):
    async def scenario():
        session, ws = connect(InProcessHost(runtime))
        task = asyncio.create_task(session.run())
        feeder = asyncio.create_task(stream_real_time(ws, 20.0))
        ws.send(type="response.create", event_id="evt_1", response={"metadata": {"client_event_id": "evt_1"}})
        await ws.until(lambda: ws.of("response.created"), "response.created")  # at once, before the engine
        await ws.until(lambda: ws.of("response.output_audio.delta"), "the model's audio in it")
        ws.send(type="response.create", event_id="evt_bad", response={"instructions": "Shout."})
        ws.send(type="response.cancel", event_id="evt_gone", response_id="resp_nope")
        await ws.until(lambda: len(ws.of("error")) == 2, "two refusals")
        ws.send(type="response.cancel", event_id="evt_cancel")
        await ws.until(lambda: [e for e in ws.of("response.done") if e["response"]["status"] == "cancelled"],
                       "the cancel")
        ws.leave()
        await asyncio.wait_for(task, WAIT_S)
        feeder.cancel()
        return ws

    ws = asyncio.run(scenario())
    created = ws.of("response.created")[0]["response"]
    assert created["metadata"] == {"client_event_id": "evt_1"}
    bad, gone = (e["error"] for e in ws.of("error"))
    assert (bad["event_id"], bad["param"], bad["code"]) == ("evt_bad", "response.instructions",
                                                            "unsupported_parameter")
    assert gone["event_id"] == "evt_gone" and gone["message"].startswith("Cancellation failed")
    cancelled = [e for e in ws.of("response.done") if e["response"]["status"] == "cancelled"][0]
    assert cancelled["response"]["status_details"]["reason"] == "client_cancelled"
    assert ws.close_code == 1000


def test_a_client_that_leaves_while_the_session_opens_frees_its_slot(runtime):
    """The engine session is open but not yet wired (the router's answer is pending) when the client
    leaves: it is closed all the same."""

    async def scenario():
        host = InProcessHost(runtime)
        host.router_gate.clear()
        session, ws = connect(host)
        task = asyncio.create_task(session.run())
        ws.append(speech(0.5))
        await ws.until(host.runtime.opened.is_set, "the engine session's open")
        ws.leave()
        await asyncio.wait_for(task, WAIT_S)
        return ws

    ws = asyncio.run(scenario())
    assert runtime.active_sessions == 0 and ws.close_code == 1000 and not ws.of("error")


# ---- live persona and voice changes (session.update once audio flows) ---------------------------------------
class HeldPromptLive(TappedLive):
    """The real session; ``update_prompt`` first waits for ``gate`` (the test decides how long a change
    takes), so what the connection does meanwhile can be watched."""

    def __init__(self, live: Any, recorder: Any, on_first_output: Any, gate: asyncio.Event,
                 waiting: asyncio.Event) -> None:
        super().__init__(live, recorder, on_first_output)
        self.gate, self.waiting = gate, waiting

    async def update_prompt(self, text_prompt: str | None = None, voice: str | None = None) -> dict[str, Any]:
        self.waiting.set()
        await self.gate.wait()
        return await self.live.update_prompt(text_prompt, voice)


class LiveChangeHost(InProcessHost):
    def __init__(self, runtime: EngineRuntime) -> None:
        super().__init__(runtime)
        self.prompt_gate = asyncio.Event()
        self.prompt_gate.set()
        self.prompt_waiting = asyncio.Event()

    def tap_session(self, live: Any, recorder: Any, on_first_output: Any) -> TappedLive:
        return HeldPromptLive(live, recorder, on_first_output, self.prompt_gate, self.prompt_waiting)


def answer_to(ws: MemorySocket, event_id: str) -> dict[str, Any] | None:
    """The session.updated (its bizra report names the request) or error that answers ``event_id``."""
    for e in ws.events:
        if e["type"] == "session.updated" and (e.get("bizra") or {}).get("event_id") == event_id:
            return e
        if e["type"] == "error" and e["error"]["event_id"] == event_id:
            return e
    return None


def update(ws: MemorySocket, event_id: str, **session: Any) -> None:
    ws.send(type="session.update", event_id=event_id, session={"type": "realtime", **session})


def deltas_after(ws: MemorySocket, event: dict[str, Any]) -> int:
    at = next(k for k, e in enumerate(ws.events) if e is event)
    return sum(1 for e in ws.events[at:] if e["type"] == "response.output_audio.delta")


def test_persona_and_voice_change_live_while_the_audio_flows(runtime):
    """After audio flows: a persona change and a voice change are applied by the engine (the slot's prompt
    is then exactly a fresh session's prompt for the new persona and voice) and answered with
    session.updated once in effect; while a change is held, the socket is still read, appended audio is
    still played into the model and a later update waits its turn; an unknown voice and a locked field are
    refused with their params; the audio keeps streaming and the session stays open."""
    from bizra_voice.engine.api import SessionSpec

    baker = "You are a cheerful baker who talks about bread."

    async def scenario():
        host = LiveChangeHost(runtime)
        session, ws = connect(host, {"voice_prompt": "NATM1"})
        task = asyncio.create_task(session.run())
        stop = asyncio.Event()
        feeder = asyncio.create_task(stream_real_time(ws, 120.0, stop))
        await ws.until(lambda: len(ws.of("response.output_audio.delta")) >= 5, "audio")  # no response.create
        engine = session.engine
        old_prompt = runtime.engine._prompts[engine.live.slot]

        host.prompt_gate.clear()  # the persona change is held in the engine call
        update(ws, "evt_persona", instructions=baker)
        await ws.until(host.prompt_waiting.is_set, "the engine call")
        played = engine.frames_in
        update(ws, "evt_transcribe", audio={"input": {"transcription": {"model": "whisper"}}})  # waits its turn
        ws.send(type="response.create", event_id="evt_rc", response={"metadata": {"k": "held"}})
        await ws.until(lambda: [e for e in ws.of("response.created") if e["response"]["metadata"] == {"k": "held"}]
                       and engine.frames_in >= played + 10, "the socket read and audio played while the change is held")
        assert answer_to(ws, "evt_persona") is None and len(ws.of("session.updated")) == 0
        assert runtime.engine._prompts[engine.live.slot] is old_prompt  # nothing changed yet
        host.prompt_gate.set()
        await ws.until(lambda: answer_to(ws, "evt_persona") and len(ws.of("session.updated")) == 2,
                       "the persona change and the update behind it")

        update(ws, "evt_voice", audio={"output": {"voice": "coral"}})  # coral -> NATF1
        await ws.until(lambda: answer_to(ws, "evt_voice"), "the voice change")
        update(ws, "evt_nope", audio={"output": {"voice": "NOPE"}})
        update(ws, "evt_mode", mode="hybrid")
        await ws.until(lambda: answer_to(ws, "evt_nope") and answer_to(ws, "evt_mode"), "two refusals")
        voice_answer = answer_to(ws, "evt_voice")
        await ws.until(lambda: deltas_after(ws, voice_answer) >= 15, "audio after the changes")
        slot_prompt = runtime.engine._prompts[engine.live.slot]
        facts = {"live": (engine.live.text_prompt, engine.live.voice), "persona": engine.hybrid.persona,
                 "settings": (session.state.settings.instructions, session.state.settings.engine_voice)}
        stop.set()
        ws.leave()
        await asyncio.wait_for(task, WAIT_S)
        await feeder
        return ws, slot_prompt, facts

    ws, slot_prompt, facts = asyncio.run(scenario())
    persona, voice = answer_to(ws, "evt_persona"), answer_to(ws, "evt_voice")
    print(f"\nlive changes on /v1/realtime (CPU, tiny model): persona {persona['bizra']['prefill_ms']} ms, "
          f"voice {voice['bizra']['prefill_ms']} ms")
    assert persona["type"] == "session.updated" and persona["session"]["instructions"] == baker
    assert persona["bizra"]["changed"] == ["session.instructions"] and persona["bizra"]["prefill_ms"] > 0
    assert persona["bizra"]["engine_voice"] == "NATM1"
    behind = [e for e in ws.of("session.updated") if e is not persona][0]  # answered after the persona change
    assert ws.events.index(persona) < ws.events.index(behind)
    assert behind["session"]["audio"]["input"]["transcription"] == {"model": "whisper"}
    assert behind["session"]["instructions"] == baker and "bizra" not in behind
    assert voice["type"] == "session.updated" and voice["session"]["audio"]["output"]["voice"] == "coral"
    assert voice["bizra"]["changed"] == ["session.audio.output.voice"] and voice["bizra"]["engine_voice"] == "NATF1"
    assert voice["session"]["instructions"] == baker
    nope, mode = answer_to(ws, "evt_nope")["error"], answer_to(ws, "evt_mode")["error"]
    assert (nope["code"], nope["param"]) == ("invalid_value", "session.audio.output.voice")
    assert "Unknown voice 'NOPE'" in nope["message"]
    assert (mode["code"], mode["param"]) == ("session_locked", "session.mode")
    assert len(ws.of("error")) == 2 and ws.close_code == 1000
    # what the model got: exactly the prompt a fresh session of the new persona and voice prefills
    fresh = runtime.models.prepare(SessionSpec(text_prompt=baker, voice="NATF1"))
    assert slot_prompt.tokens == fresh.tokens and slot_prompt.voice.name == "NATF1"
    assert facts == {"live": (baker, "NATF1"), "persona": baker, "settings": (baker, "NATF1")}


def test_a_live_change_the_engine_refuses_or_fails_keeps_the_old_persona(runtime, monkeypatch):
    """A persona too long for the model's context (the engine's BadSessionRequest) and a re-prefill that
    fails in the engine (EngineError) are errors naming the request and its param; the slot keeps its old
    prompt, the settings their old values, and the audio goes on."""
    too_long = "a,b." * 1000  # 4000 characters the tiny tokenizer makes into ~4000 tokens: past the context

    def broken(slot, prompt):
        raise RuntimeError("a prefill step failed")
        yield  # pragma: no cover

    async def scenario():
        session, ws = connect(InProcessHost(runtime), {"text_prompt": "Be calm."})
        task = asyncio.create_task(session.run())
        stop = asyncio.Event()
        feeder = asyncio.create_task(stream_real_time(ws, 120.0, stop))
        await ws.until(lambda: len(ws.of("response.output_audio.delta")) >= 5, "audio")
        engine = session.engine
        old_prompt = runtime.engine._prompts[engine.live.slot]
        update(ws, "evt_long", instructions=too_long)
        await ws.until(lambda: answer_to(ws, "evt_long"), "the refusal")
        monkeypatch.setattr(runtime.engine, "reprompt_steps", broken)
        update(ws, "evt_fail", audio={"output": {"voice": "NATF3"}})
        await ws.until(lambda: answer_to(ws, "evt_fail"), "the failure")
        failure = answer_to(ws, "evt_fail")
        await ws.until(lambda: deltas_after(ws, failure) >= 15, "audio after the failure")
        kept = (runtime.engine._prompts[engine.live.slot] is old_prompt, engine.live.text_prompt, engine.live.voice,
                session.state.settings.instructions, session.state.settings.voice)
        stop.set()
        ws.leave()
        await asyncio.wait_for(task, WAIT_S)
        await feeder
        return ws, kept

    ws, kept = asyncio.run(scenario())
    refused, failed = answer_to(ws, "evt_long")["error"], answer_to(ws, "evt_fail")["error"]
    assert (refused["type"], refused["code"], refused["param"]) == ("invalid_request_error", "invalid_value",
                                                                   "session.instructions")
    assert "context" in refused["message"] and "keeps its current persona" in refused["message"]
    assert (failed["type"], failed["code"], failed["param"]) == ("server_error", "live_update_failed",
                                                                "session.audio.output.voice")
    assert "RuntimeError" in failed["message"]
    assert kept == (True, "Be calm.", "NATM1", "Be calm.", "NATM1")
    assert not ws.of("session.updated") and ws.close_code == 1000
