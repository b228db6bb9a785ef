"""The engine side of one ``/v1/realtime`` connection: open, pace the audio in, turn frames into events.

- **Opening never blocks the socket.** ``want()`` (first append, ``response.create`` or a typed message)
  fixes the session's settings and lets ``run()`` open the engine session in its own task; appends keep
  being read meanwhile (an open takes ~2 s on a slow machine).
- **Audio is paced.** Appended audio waits in an ``AudioPacer`` (bounded: ``realtime.max_buffered_audio_s``;
  past it the append gets an ``error`` and its excess is refused) and is played into
  ``LiveSession.push_pcm`` one 80 ms frame per 80 ms - early only into an engine that has produced a
  frame for every frame given, so a burst or the audio sent during the open never queues in the runtime
  (which would drop the oldest input to catch up).
- **Frames become events.** Each output frame goes to hybrid mode, the user-turn detector
  (``realtime_turns.py``) and the ``ResponseStream``; their events are sent.
- **The client's functions.** Hybrid mode's knowledge model is offered the session's ``tools``; its call
  of one becomes a ``function_call`` response, the client's ``function_call_output`` items are kept
  (``PendingCalls``) and ``response.create`` resumes the answer with them (``realtime/function_calls.py``).
- **The persona and voice change live.** ``change_prompt`` (a ``session.update`` of a started session)
  re-anchors the slot on the new prompt plus the recent conversation between ticks; the pacer and the
  frame loop keep running meanwhile. Hybrid mode's knowledge answers follow the new persona too.

``run()`` ends only with an exception: ``SessionClosed`` (its ``cause`` says who ended it), or
``AtCapacity`` / ``BadSessionRequest`` / ``EngineError`` from the open; the connection turns it into the
client's ending (``serve/endings.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np

from bizra_voice import constants as C
from bizra_voice.engine.api import AtCapacity, BadSessionRequest, EngineError, SessionClosed, SessionSpec
from bizra_voice.hybrid import MAX_PERSONA_CHARS
from bizra_voice.realtime import LiveChange, RealtimeError, ResponseStream, SessionState, new_id
from bizra_voice.realtime import server_events as E
from bizra_voice.realtime.function_calls import FunctionOutput, PendingCalls, answer_options
from bizra_voice.serve.pacer import AudioPacer
from bizra_voice.serve.realtime_turns import UserTurns
from bizra_voice.turns import TurnConfig

log = logging.getLogger("ray.serve")

ENDPOINT = "realtime"
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RealtimeHost(Protocol):
    """What a Realtime connection uses of its VoiceServer (the engine, the other deployments, operations)."""

    runtime: Any  # EngineRuntime: open_session, admission_refusal, voices, tokenizer
    config: Any  # AppConfig: hybrid, router, realtime
    engine_config: Any  # EngineConfig: default_voice, default_persona
    metrics: Any  # VoiceMetrics: rejected, started, first_audio
    router: Any
    qwen: Any
    transcriber: Any

    async def _decide(self, requested: str) -> dict[str, Any]: ...
    def _sampling(self, params: Any) -> Any: ...
    def _capacity_message(self, refusal: str | None = None) -> str: ...
    def _input_dropped_reporter(self, endpoint: str, out: Any) -> Callable[[int, int], None]: ...
    def bind_session_logs(self, session_id: str) -> None: ...
    def start_recording(self, session_id: str, requested: bool, endpoint: str, meta: dict[str, Any]) -> Any: ...
    def tap_session(self, live: Any, recorder: Any, on_first_output: Any) -> Any: ...


class _ExtensionOut:
    """An ``Outbox``-like ``event()`` that sends our own events as ``bizra.*`` (the input-dropped report)."""

    def __init__(self, send: Send) -> None:
        self._send = send

    async def event(self, event: dict[str, Any]) -> None:
        await self._send(E.extension(event))


class RealtimeEngine:
    def __init__(self, host: RealtimeHost, params: Any, state: SessionState, responses: ResponseStream,
                 send: Send, accepted_at: float, audio_track: Any = None) -> None:
        self.host = host
        self.audio_track = audio_track  # a WebRTC call's outbound track (None: audio in response events)
        self.params = params
        self.state = state
        self.responses = responses
        self.send = send
        self.accepted_at = accepted_at
        self.pacer = AudioPacer(max_buffered_s=host.config.realtime.max_buffered_audio_s,
                                caught_up=lambda: self.frames_out >= self.frames_in)
        self.turns = UserTurns(responses.conversation, send, transcriber=self._transcriber(),
                               transcribe_timeout_s=host.config.hybrid.transcribe_timeout_s,
                               wants_transcripts=self._wants_transcripts)
        self.live: Any = None  # the LiveSession once open (tapped for recording and metrics once wired)
        self.recorder: Any = None
        self.hybrid: Any = None
        self.decision: dict[str, Any] | None = None
        self.calls = PendingCalls()  # the client's function calls and outputs
        self.frames_in = 0  # frames played into the engine
        self.frames_out = 0  # frames it produced
        self._wanted = asyncio.Event()
        self._opened = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    # ---- the connection's calls ----------------------------------------------------------------------
    def want(self) -> None:
        """The client needs the engine: fix the settings and open it (in ``run``), once."""
        self.state.start()
        self._wanted.set()

    def offer(self, pcm: np.ndarray, event_id: str | None) -> None:
        """Appended audio (24 kHz float): buffered for the engine and the commit buffer; past the bound an
        error tells the client how much was refused."""
        offered = self.pacer.offer(pcm)
        self.turns.appended(pcm[: offered.accepted])
        if offered.refused:
            limit = self.host.config.realtime.max_buffered_audio_s
            raise RealtimeError(
                f"The last {offered.refused / C.SAMPLE_RATE:.2f} s of this append were refused: at most {limit:g} s "
                f"of audio may wait to be played into the model, which hears it in real time, and "
                f"{self.pacer.buffered_s:.1f} s are waiting. Send audio closer to real time.",
                "input_audio_buffer_full", param="audio", event_id=event_id)

    def typed(self, text: str) -> None:
        """A typed user message for hybrid mode (answered once the engine session is open)."""
        self._spawn(self._typed(text))

    async def change_prompt(self, change: LiveChange) -> dict[str, Any]:
        """Apply a live persona and/or voice change; returns ``update_prompt``'s result once it is in effect.
        Asked while the engine session opens, it waits for the open. Raises RealtimeError (refused or failed:
        nothing changed) or SessionClosed (the session is ending; its end is told on its own)."""
        await self._opened.wait()
        try:
            result = await self.live.update_prompt(change.instructions, change.engine_voice)
        except SessionClosed:
            raise
        except BadSessionRequest as exc:
            raise change.refused(str(exc)) from None
        except EngineError as exc:
            raise change.failed(str(exc)) from None
        if change.instructions is not None and self.hybrid is not None:  # Qwen answers as the new persona
            persona = change.instructions or self.host.engine_config.default_persona
            self.hybrid.persona = (persona or "")[:MAX_PERSONA_CHARS] or None
        log.info("realtime session %s: live %s change in %.1f ms", self.live.session_id,
                 " and ".join(change.changed), result["prefill_ms"])
        return result

    def function_output(self, output: FunctionOutput, event_id: str | None) -> list[dict[str, Any]]:
        """The client's output for a call of its function: kept for the answer's resume; its item events.
        RealtimeError when no call awaits it."""
        self.calls.answered(output, event_id)
        return self.responses.conversation.added(output.item(output.item_id or new_id("item")))

    def resume_answer(self) -> bool:
        """``response.create`` after function outputs: the paused answer goes on with them (True if it did)."""
        if not self.calls.outputs or self.hybrid is None:
            return False
        return bool(self.hybrid.resume(self.calls.take()))

    async def cancel_answer(self, reason: str) -> None:
        if self.audio_track is not None:
            self.audio_track.flush()
        if self.hybrid is not None:  # a guided answer stops too (PersonaPlex's own words are its own)
            await self.hybrid.cancel_answer(reason)

    @property
    def session_id(self) -> str | None:
        return self.live.session_id if self.live is not None else None

    # ---- the engine session ----------------------------------------------------------------------------
    async def run(self) -> None:
        await self._wanted.wait()
        await self._open()
        tasks = [asyncio.create_task(self.pacer.run(self._play)), asyncio.create_task(self._frames())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # raises the end
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _open(self) -> None:
        host, settings = self.host, self.state.settings
        spec = SessionSpec(text_prompt=settings.instructions, voice=settings.engine_voice,
                           sampling=host._sampling(self.params))
        decision_task = asyncio.create_task(host._decide(settings.mode))
        try:
            self.live = live = await host.runtime.open_session(spec)  # closed by close() from here on
        except BaseException as exc:
            decision_task.cancel()
            if isinstance(exc, (AtCapacity, BadSessionRequest, EngineError)):
                host.metrics.rejected(ENDPOINT, "capacity" if isinstance(exc, AtCapacity) else "bad_request")
            raise
        self.decision = await decision_task
        host.bind_session_logs(live.session_id)
        live.on_input_dropped = host._input_dropped_reporter(ENDPOINT, _ExtensionOut(self.send))
        self.recorder = host.start_recording(live.session_id, settings.record, ENDPOINT, {
            "voice": live.voice, "instructions": settings.instructions, "mode": self.decision.get("mode")})
        if self.recorder is not None:  # what session.update chose before the recording could start
            self.recorder.event({"type": "session.config", "session": self.state.session_object(),
                                 "router": self.decision})

        def first_audio() -> None:
            host.metrics.first_audio(ENDPOINT, (time.monotonic() - self.accepted_at) * 1000)

        self.live = host.tap_session(live, self.recorder, first_audio)  # the same session, recorded
        from bizra_voice.serve.hybrid_wiring import hybrid_controller

        self.hybrid = hybrid_controller(host, live, settings.mode, settings.instructions, self._hybrid_event,
                                        detect_turns=False)
        self.hybrid.answer_options = lambda: answer_options(self.state.settings.tools, self.state.settings.tool_choice)
        h = host.config.hybrid
        detect = TurnConfig(min_db=h.vad_min_db, hangover_ms=h.vad_hangover_ms, early_end_ms=h.vad_early_end_ms)
        self.turns.start(self.hybrid, detect if self._wants_transcripts() else None)
        host.metrics.started(ENDPOINT, (time.monotonic() - self.accepted_at) * 1000)
        log.info("realtime session on slot %d: voice %s, mode %s (%s), recording %s, %.1f s of audio waited "
                 "for the open", live.slot, live.voice, self.decision.get("mode"), self.decision.get("reason"),
                 self.recorder is not None, self.pacer.buffered_s)
        self._opened.set()

    async def _play(self, frame: np.ndarray) -> None:
        """The pacer's sink: one frame into the model, then to the turn detector (the model's timeline)."""
        self.live.push_pcm(frame)  # SessionClosed ends the run: the engine ended the session
        self.frames_in += 1
        await self.turns.played(frame)

    async def _frames(self) -> None:
        while True:
            out = await self.live.next_output()  # raises SessionClosed at the end
            self.frames_out += 1
            self.pacer.kick()
            text = out.text or ""
            self.hybrid.on_output(out)
            if self.audio_track is not None:
                self.audio_track.push(out.pcm)
            await self.turns.assistant_text(text)
            for event in self.responses.on_frame(out.pcm, text):
                await self.send(event)

    async def close(self) -> None:
        """Free everything (the connection is over); the open response, if any, is recorded as cancelled."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.turns.close()
        if self.hybrid is not None:
            await self.hybrid.close()
        for event in self.responses.cancel("turn_detected"):
            if self.recorder is not None:
                self.recorder.event({"direction": "out", **event})
        if self.live is not None:
            await self.live.close()
        if self.recorder is not None:
            self.recorder.close()

    # ---- hybrid mode and transcription -------------------------------------------------------------------
    def _wants_transcripts(self) -> bool:
        """User turns are transcribed when the session asks for it or hybrid mode may answer them."""
        hybrid = self.state.settings.mode != "standalone" or (self.decision or {}).get("mode") == "hybrid"
        return self.host.transcriber is not None and (self.state.settings.transcription or hybrid)

    def _transcriber(self) -> Callable[[np.ndarray, int], Awaitable[dict[str, Any]]] | None:
        transcriber = self.host.transcriber
        if transcriber is None:
            return None

        async def transcribe(pcm: np.ndarray, sample_rate: int) -> dict[str, Any]:
            return await transcriber.transcribe.remote(pcm, sample_rate)

        return transcribe

    async def _typed(self, text: str) -> None:
        await self._opened.wait()
        await self.hybrid.on_user_text(None, {"text": text})

    async def _hybrid_event(self, event: dict[str, Any]) -> None:
        """Hybrid mode's events in Realtime terms; the rest as ``bizra.*`` extension events."""
        kind = event.get("type")
        if kind == "transcript.user":
            if event.get("source") == "speech":
                await self.send(E.transcription_completed(event.get("item_id") or new_id("item"),
                                                          event.get("text", ""), event.get("audio_s", 0.0)))
            return  # typed text was acknowledged with conversation.item.added/done
        if kind == "transcript.error":
            await self.send(E.transcription_failed(event.get("item_id") or new_id("item"), event["reason"]))
            return
        if kind == "tool.client_calls":  # the knowledge model called the client's functions
            self.calls.asked(event["calls"])
            for out in self.responses.function_calls(event["calls"]):
                await self.send(out)
            return
        if kind == "tool.client_calls.dropped":
            self.calls.dropped(event["call_ids"], event["reason"])
        if kind == "playback.flush":  # barge-in: the guided answer stopped; close the open response
            if self.audio_track is not None:
                self.audio_track.flush()  # what the server still had to send is not played
            for out in self.responses.cancel("turn_detected"):
                await self.send(out)
        await self.send(E.extension(event))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
