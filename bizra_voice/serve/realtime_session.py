"""One ``/v1/realtime`` (OpenAI Realtime GA) WebSocket session on the replica that owns its engine slot.

The protocol lives in ``bizra_voice/realtime.py``; this is the loop: JSON text frames in, JSON text frames
out. The engine session opens lazily, on the first ``input_audio_buffer.append`` (or ``response.create``),
so that a ``session.update`` sent first can still choose the persona (``instructions``), the voice and the
mode: both are prefilled into the model and fixed afterwards. Same engine, same slots, same limits as
``/api/chat``: a full replica answers an ``error`` event (code ``server_at_capacity``) and close 1013.

User speech: when the session asked for input transcription (``audio.input.transcription`` not null) or
its mode is hybrid/auto, and a Transcriber is deployed, user turns found by hybrid mode's ``TurnDetector``
(or closed by ``input_audio_buffer.commit``) are transcribed and reported as
``conversation.item.input_audio_transcription.completed``.

Hybrid mode: the session's ``HybridController`` (the same one ``/api/chat`` uses) takes those user turns
and typed ``conversation.item.create`` messages, asks the router and Qwen, and guides PersonaPlex to speak
the answer in the persona's voice; its own events go out as ``bizra.*`` events. A barge-in closes the open
response (``response.done`` status ``cancelled``, reason ``turn_detected``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import numpy as np

from bizra_voice import constants as C
from bizra_voice import protocol as P
from bizra_voice.engine.api import AtCapacity, BadSessionRequest, EngineError, SessionClosed, SessionSpec
from bizra_voice.realtime import (
    ClientEvent,
    RealtimeError,
    RealtimeProtocol,
    RealtimeSettings,
    error_event,
    new_id,
    parse_client_event,
)
from bizra_voice.turns import TurnConfig, TurnDetector, TurnEvent

log = logging.getLogger("ray.serve")

ENDPOINT = "realtime"


class _Gone(Exception):
    """The client disconnected."""


class _Fatal(Exception):
    """Send an ``error`` event, then close with ``close_code``."""

    def __init__(self, message: str, code: str, close_code: int, error_type: str = "server_error") -> None:
        super().__init__(message)
        self.message, self.code, self.close_code, self.error_type = message, code, close_code, error_type


class RealtimeSession:
    """Runs one Realtime connection. ``server`` is the VoiceServer (runtime, router, transcriber, config)."""

    def __init__(self, server: Any, ws: Any, params: Any, accepted_at: float) -> None:
        self.server = server
        self.ws = ws
        self.params = params
        self.accepted_at = accepted_at
        engine = server.engine_config
        settings = RealtimeSettings(model=str(ws.query_params.get("model") or "personaplex-7b-v1")[:128],
                                    instructions=params.text_prompt or "",
                                    voice=params.voice_prompt or engine.default_voice, mode=params.mode,
                                    record=params.record)
        self.proto = RealtimeProtocol(settings)
        self.live: Any = None
        self.recorder: Any = None
        self.decision: dict[str, Any] | None = None
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._engine_task: asyncio.Task | None = None
        self._side_tasks: set[asyncio.Task] = set()
        self._turns: Any = None
        self._commit_buffer: list[np.ndarray] = []
        self._turn_item: str | None = None
        self._audio_in_samples = 0
        self.hybrid: Any = None  # HybridController, once the engine session is open

    # ---- sending -------------------------------------------------------------------------------------
    async def send(self, event: dict[str, Any]) -> None:
        if self._closed:
            raise _Gone()
        if self.recorder is not None and not event["type"].endswith(".delta"):
            self.recorder.event({"direction": "out", **event})
        async with self._send_lock:
            try:
                await self.ws.send_text(json.dumps(event, ensure_ascii=False))
            except Exception as exc:
                self._closed = True
                raise _Gone() from exc

    async def close(self, code: int = P.CloseCode.NORMAL, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        try:
            async with self._send_lock:
                await self.ws.close(code=code, reason=reason[:120])
        except Exception:
            pass

    async def fail(self, message: str, code: str, close_code: int, error_type: str = "server_error") -> None:
        """``error`` event + close; never raises."""
        try:
            await self.send(error_event(message, code, error_type=error_type))
        except _Gone:
            return
        await self.close(close_code, message)

    def drain_handle(self) -> _DrainHandle:
        """What VoiceServer.drain uses to warn and then close this connection."""
        return _DrainHandle(self)

    # ---- main ----------------------------------------------------------------------------------------
    async def run(self) -> None:
        server = self.server
        try:
            if server.runtime.active_sessions >= server.runtime.capacity:
                server.metrics.rejected(ENDPOINT, "capacity")
                await self.fail(server._capacity_message(), "server_at_capacity", P.CloseCode.AT_CAPACITY)
                return
            await self.send(self.proto.session_created())
            receiver = asyncio.create_task(self.receive_loop())
            waiting = {receiver}
            while True:
                if self._engine_task is not None:
                    waiting.add(self._engine_task)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED, timeout=0.5)
                if done:
                    break
            if self.live is not None:
                server.bind_session_logs(self.live.session_id)  # the session id was bound in the receiver task
            for task in done:
                exc = task.exception()
                if isinstance(exc, _Fatal):
                    await self.fail(exc.message, exc.code, exc.close_code, exc.error_type)
                    return
                if exc is not None and not isinstance(exc, (_Gone, SessionClosed)):
                    log.error("realtime session failed", exc_info=exc)
                    await self.fail("internal server error; the session was closed", "internal_error",
                                    P.CloseCode.INTERNAL)
                    return
            reason = self.live.close_reason if self.live is not None else None
            if reason and reason != "closed by the client" and not self._closed:
                code = P.CloseCode.GOING_AWAY if "shutting down" in reason else P.CloseCode.INTERNAL
                await self.fail(f"The server ended the session: {reason}.", "session_ended", code)
                return
            await self.close(P.CloseCode.NORMAL)
        finally:
            await self._cleanup()

    async def _cleanup(self) -> None:
        tasks = [t for t in (self._engine_task, *self._side_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.hybrid is not None:
            await self.hybrid.close()
        for event in self.proto.cancel("turn_detected"):
            if self.recorder is not None:
                self.recorder.event({"direction": "out", **event})
        if self.live is not None:
            await self.live.close()
        if self.recorder is not None:
            self.recorder.close()

    # ---- receiving -----------------------------------------------------------------------------------
    async def receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise _Gone()
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            try:
                event = parse_client_event(data)
                await self.handle(event)
            except RealtimeError as exc:
                await self.send(error_event(exc.message, exc.code, error_type=exc.error_type, param=exc.param,
                                            event_id=exc.event_id))

    async def handle(self, event: ClientEvent) -> None:
        if self.recorder is not None and event.kind != "append":
            self.recorder.event({"direction": "in", "type": event.kind, "event_id": event.event_id})
        if event.kind == "session.update":
            assert event.changes is not None
            self.proto.apply(event.changes)
            await self.send(self.proto.session_updated())
        elif event.kind == "append":
            await self._ensure_engine()
            assert event.audio is not None
            await self._user_audio(self.proto.decode_input(event.audio, event.event_id))
        elif event.kind == "commit":
            await self._commit(event.event_id)
        elif event.kind == "clear":
            self._commit_buffer.clear()
            await self.send(self.proto.cleared())
        elif event.kind == "response.create":
            # Full duplex: PersonaPlex decides when to speak; the request is accepted and starts the session.
            await self._ensure_engine()
        elif event.kind == "response.cancel":
            for out in self.proto.cancel("client_cancelled"):
                await self.send(out)
            if self.hybrid is not None:  # a guided answer stops too (PersonaPlex's own words are its own)
                await self.hybrid.cancel_answer("client_cancelled")
        elif event.kind == "item.truncate":
            assert event.item_id is not None and event.audio_end_ms is not None
            await self.send(self.proto.truncated(event.item_id, event.audio_end_ms, event.event_id))
        elif event.kind == "item.create":
            assert event.text is not None
            if self.proto.settings.mode == "standalone" or self.server.qwen is None:
                why = "this session is standalone" if self.server.qwen is not None else \
                    "no knowledge model (Qwen) is deployed here"
                raise RealtimeError(f"Typed messages are answered in hybrid mode only, and {why}: PersonaPlex "
                                    "alone hears audio. Speak instead, or open the session with "
                                    "session.update mode 'hybrid' or 'auto'.", "hybrid_unavailable",
                                    param="item", event_id=event.event_id)
            await self._ensure_engine()
            for out in self.proto.user_text_item(event.item_id or new_id("item"), event.text):
                await self.send(out)
            await self.hybrid.on_user_text(None, {"text": event.text})

    async def _user_audio(self, pcm: np.ndarray) -> None:
        if not pcm.size:  # a resampler (G.711 input) holding its first samples back
            return
        try:
            self.live.push_pcm(pcm)
        except BadSessionRequest as exc:
            raise RealtimeError(str(exc), "invalid_value", param="audio") from None
        except SessionClosed:
            return  # the engine task reports why
        self._audio_in_samples += pcm.size
        self._commit_buffer.append(pcm)
        if self._turns is not None:
            now = self.hybrid.clock()  # turn events go to the controller: one clock for both
            for turn in self._turns.push_user_pcm(pcm, now):
                await self._turn_event(turn)

    async def _turn_event(self, turn: Any) -> None:
        at_ms = int(self._audio_in_samples * 1000 / C.SAMPLE_RATE)
        if turn.kind == "speech.start":
            self._turn_item = new_id("item")
            await self.send(self.proto.speech_started(self._turn_item, at_ms))
            self.hybrid.on_turn_event(turn)  # a barge-in stops a guided answer
        elif turn.kind == "turn.end":
            item_id = self._turn_item or new_id("item")
            self._turn_item = None
            await self.send(self.proto.speech_stopped(item_id, at_ms))
            for event in self.proto.committed(item_id):
                await self.send(event)
            self._commit_buffer.clear()
            if turn.audio is not None and turn.audio.size:
                self._user_turn(item_id, turn)

    async def _commit(self, event_id: str | None) -> None:
        if not self._commit_buffer:
            raise RealtimeError("The input audio buffer is empty: append audio before committing.",
                                "input_audio_buffer_commit_empty", event_id=event_id)
        audio = np.concatenate(self._commit_buffer)
        self._commit_buffer.clear()
        item_id = new_id("item")
        for event in self.proto.committed(item_id):
            await self.send(event)
        if self._transcription_active:
            speech_ms = audio.size * 1000 / C.SAMPLE_RATE
            self._user_turn(item_id, TurnEvent("turn.end", self.hybrid.clock(), audio, speech_ms, "commit"))

    def _user_turn(self, item_id: str, turn: TurnEvent) -> None:
        """A finished user turn: hybrid mode transcribes and answers it; otherwise it is only transcribed."""
        if self.hybrid is not None and self.hybrid.hears_speech:
            self.hybrid.on_turn_event(turn, item_id)  # -> transcript.user / transcript.error with item_id
        else:
            self._transcribe(item_id, turn.audio)

    @property
    def _transcription_active(self) -> bool:
        transcriber = getattr(self.server, "transcriber", None)
        hybrid = self.proto.settings.mode != "standalone" or (bool(self.decision)
                                                             and self.decision.get("mode") == "hybrid")
        return transcriber is not None and (self.proto.settings.transcription or hybrid)

    async def _hybrid_event(self, event: dict[str, Any]) -> None:
        """Hybrid mode's events in Realtime terms; the rest as ``bizra.*`` extension events."""
        kind = event.get("type")
        try:
            if kind == "transcript.user":
                if event.get("source") == "speech":
                    await self.send(self.proto.transcription_completed(
                        event.get("item_id") or new_id("item"), event.get("text", ""), event.get("audio_s", 0.0)))
                return  # typed text was acknowledged with conversation.item.added/done
            if kind == "transcript.error":
                await self.send(self.proto.transcription_failed(event.get("item_id") or new_id("item"),
                                                                event["reason"]))
                return
            if kind == "playback.flush":  # barge-in: the guided answer stopped; close the open response
                for out in self.proto.cancel("turn_detected"):
                    await self.send(out)
            await self.send(self.proto.extension(event))
        except _Gone:
            pass

    def _transcribe(self, item_id: str, audio: np.ndarray) -> None:
        task = asyncio.create_task(self._transcribe_task(item_id, audio))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _transcribe_task(self, item_id: str, audio: np.ndarray) -> None:
        timeout = self.server.config.hybrid.transcribe_timeout_s
        try:
            result = await asyncio.wait_for(self.server.transcriber.transcribe.remote(audio, C.SAMPLE_RATE),
                                            timeout=timeout)
        except Exception as exc:
            log.warning("transcription of %s failed: %s", item_id, type(exc).__name__)
            await self.send(self.proto.transcription_failed(item_id, f"transcription failed "
                                                                     f"({type(exc).__name__})"))
            return
        await self.send(self.proto.transcription_completed(item_id, str(result.get("text", "")),
                                                           audio.size / C.SAMPLE_RATE))

    # ---- the engine session --------------------------------------------------------------------------
    async def _ensure_engine(self) -> None:
        if self.live is not None:
            return
        server = self.server
        settings = self.proto.settings
        spec = SessionSpec(text_prompt=settings.instructions, voice=settings.voice,
                           sampling=server._sampling(self.params))
        decision_task = asyncio.create_task(server._decide(settings.mode))
        try:
            live = await server.runtime.open_session(spec)
        except AtCapacity:
            decision_task.cancel()
            server.metrics.rejected(ENDPOINT, "capacity")
            raise _Fatal(server._capacity_message(), "server_at_capacity", P.CloseCode.AT_CAPACITY) from None
        except (BadSessionRequest, EngineError) as exc:
            decision_task.cancel()
            server.metrics.rejected(ENDPOINT, "bad_request")
            raise _Fatal(str(exc), "invalid_session", P.CloseCode.BAD_REQUEST, "invalid_request_error") from None
        self.proto.started = True
        self.decision = await decision_task
        server.bind_session_logs(live.session_id)
        self.recorder = server.start_recording(live.session_id, settings.record, ENDPOINT, {
            "voice": live.voice, "instructions": settings.instructions, "mode": self.decision.get("mode")})
        if self.recorder is not None:  # what session.update chose before the recording could start
            self.recorder.event({"type": "session.config", "session": self.proto.session_object(),
                                 "router": self.decision})
        started_ms = (time.monotonic() - self.accepted_at) * 1000

        def first_audio() -> None:
            server.metrics.first_audio(ENDPOINT, (time.monotonic() - self.accepted_at) * 1000)

        self.live = server.tap_session(live, self.recorder, first_audio)
        from bizra_voice.serve.hybrid_wiring import hybrid_controller

        self.hybrid = hybrid_controller(server, live, settings.mode, settings.instructions, self._hybrid_event,
                                        detect_turns=False)
        server.metrics.started(ENDPOINT, started_ms)
        log.info("realtime session on slot %d: voice %s, mode %s (%s), recording %s", live.slot, live.voice,
                 self.decision.get("mode"), self.decision.get("reason"), self.recorder is not None)
        if self._transcription_active:
            h = server.config.hybrid
            self._turns = TurnDetector(TurnConfig(min_db=h.vad_min_db, hangover_ms=h.vad_hangover_ms,
                                                  early_end_ms=h.vad_early_end_ms))
        self._engine_task = asyncio.create_task(self.engine_loop())

    async def engine_loop(self) -> None:
        while True:
            out = await self.live.next_output()  # raises SessionClosed at the end
            text = out.text or ""
            self.hybrid.on_output(out)
            if self._turns is not None:
                turn = self._turns.push_assistant_token(bool(text.strip()), self.hybrid.clock())
                if turn is not None:
                    await self._turn_event(turn)
            for event in self.proto.on_frame(out.pcm, text):
                await self.send(event)


class _DrainHandle:
    """``event``/``fail`` like an ``Outbox``, for VoiceServer.drain (session.draining, then close 1001)."""

    def __init__(self, session: RealtimeSession) -> None:
        self.session = session

    async def event(self, event: dict[str, Any]) -> None:
        with contextlib.suppress(_Gone):
            await self.session.send({"event_id": new_id("event"), **event})

    async def fail(self, message: str, code: int) -> None:
        await self.session.fail(message, "server_draining", code)
