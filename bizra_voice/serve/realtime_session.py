"""One ``/v1/realtime`` (OpenAI Realtime GA) WebSocket connection, on the replica that owns its engine slot.

``VoiceServer.realtime`` (the route: access, drain, query parameters) hands the accepted socket to a
``RealtimeSession``; this module is the socket: client events in, checked by ``bizra_voice/realtime`` (the
pure protocol) and dispatched; server events out, one at a time. The engine side - opening the session
without blocking the socket, pacing bursty audio into it, turning its frames into response events, user
turns and transcription - is ``serve/realtime_engine.py``. Same engine, slots and limits as ``/api/chat``.

**Nothing ends silently.** Every end the server causes - the engine fell behind (1013), its output was not
read (4408), an engine error (1011), the replica stopping or draining (1001), no capacity (1013), a bad
session request such as an unknown ``voice_prompt`` (1008), an internal error (1011) - closes the open
response as ``failed``, sends an ``error`` event with its code, closes the socket with its close code and
logs one line with the session id; ``serve/endings.py`` decides the codes. A client's bad event is no end:
it gets a recoverable ``error`` naming its ``event_id``.

**``session.update`` in order, live changes off the socket.** Updates are answered in the order they came.
One that changes the persona or voice of a started session is applied by the engine (a re-prefill, up to
seconds on a slow machine) in its own task: the socket keeps being read and the audio keeps flowing, and
``session.updated`` goes out once the change is in effect; updates sent meanwhile wait behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bizra_voice import protocol as P
from bizra_voice.engine.api import AtCapacity, BadSessionRequest, SessionClosed
from bizra_voice.realtime import (
    ClientEvent,
    Conversation,
    RealtimeError,
    RealtimeSettings,
    ResponseStream,
    SessionChanges,
    SessionState,
    SettingsUpdate,
    error_event,
    new_id,
    parse_client_event,
)
from bizra_voice.realtime import server_events as E
from bizra_voice.realtime.response_create import check_response
from bizra_voice.realtime.voices import VoiceMap
from bizra_voice.serve.endings import ClientGone, Ending, ending_for, log_ending
from bizra_voice.serve.realtime_engine import ENDPOINT, RealtimeEngine, RealtimeHost

log = logging.getLogger("ray.serve")


class RealtimeSession:
    """Runs one Realtime connection for ``server`` (the VoiceServer, see ``RealtimeHost``)."""

    def __init__(self, server: RealtimeHost, ws: Any, params: Any, accepted_at: float, *,
                 audio_track: Any = None) -> None:
        """``ws``: the WebSocket, or a WebRTC call's data channel (``webrtc/channel.py``), whose audio then
        flows on ``audio_track`` (the assistant's) and the call's inbound track."""
        self.host = server
        self.ws = ws
        settings = RealtimeSettings(model=str(ws.query_params.get("model") or "personaplex-7b-v1")[:128],
                                    instructions=params.text_prompt or "",
                                    voice=params.voice_prompt or server.engine_config.default_voice,
                                    mode=params.mode, record=params.record)
        runtime = server.runtime
        voices = VoiceMap(server.config.realtime.voices, lambda: [v["name"] for v in runtime.voices()])
        self.state = SessionState(settings, voices, can_force_tools=not server.config.knowledge.local)
        self.responses = ResponseStream(self.state, Conversation(), audio_events=audio_track is None)
        self.engine = RealtimeEngine(server, params, self.state, self.responses, self.send, accepted_at,
                                     audio_track=audio_track)
        self.updates = SessionUpdates(self.state, self.engine, self.send)
        self.ending: Ending | None = None  # what the client was told, when the server ended the session
        self._send_lock = asyncio.Lock()
        self._closed = False

    # ---- sending and ending -----------------------------------------------------------------------------
    async def send(self, event: dict[str, Any]) -> None:
        if self._closed:
            raise ClientGone()
        recorder = self.engine.recorder
        if recorder is not None and not event["type"].endswith(".delta"):
            recorder.event({"direction": "out", **event})
        async with self._send_lock:
            try:
                await self.ws.send_text(json.dumps(event, ensure_ascii=False))
            except Exception as exc:
                self._closed = True
                raise ClientGone() from exc

    async def close(self, code: int = P.CloseCode.NORMAL, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            async with self._send_lock:
                await self.ws.close(code=code, reason=reason[:120])

    async def end(self, ending: Ending, exc: BaseException | None = None) -> None:
        """The server ends the session: log it, fail the open response, ``error`` event, close. Never raises."""
        if self._closed:
            return
        self.ending = ending
        log_ending(self.engine.session_id or self.state.session_id, ending, exc)
        with contextlib.suppress(ClientGone):
            for event in self.responses.fail(ending.code, ending.message):
                await self.send(event)
            await self.send(error_event(ending.message, ending.code, error_type=ending.error_type))
        await self.close(ending.close_code, ending.message)

    async def fail(self, message: str, code: str, close_code: int, error_type: str = "server_error") -> None:
        """End with this message and codes (VoiceServer's refusals before a session runs)."""
        await self.end(Ending(message, int(close_code), code, error_type))

    def drain_handle(self) -> _DrainHandle:
        """What VoiceServer.drain uses to warn and then close this connection."""
        return _DrainHandle(self)

    # ---- main ---------------------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            exc = await self._serve()
            ending = ending_for(exc)
            if ending is not None:
                await self.end(ending, exc)
            else:
                await self.close(P.CloseCode.NORMAL)
        finally:
            await self.updates.close()
            await self.engine.close()

    async def _serve(self) -> BaseException | None:
        """Serve until the client leaves or something ends the session; returns why (None: a normal end)."""
        try:
            self._admit()
            await self.send(self.state.created())
        except Exception as exc:
            return exc
        tasks = [asyncio.create_task(self._receive_loop()), asyncio.create_task(self.engine.run())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.engine.session_id is not None:
            self.host.bind_session_logs(self.engine.session_id)  # it was bound in the engine's task
        ends = [task.exception() for task in done if not task.cancelled()]
        told = [exc for exc in ends if ending_for(exc) is not None]  # a server-side end wins over a leave
        return told[0] if told else None

    def _admit(self) -> None:
        """Refuse at once what cannot become a session: no capacity, an unknown voice in the query."""
        refusal = self.host.runtime.admission_refusal()
        if refusal is not None:
            self.host.metrics.rejected(ENDPOINT, "capacity")
            raise AtCapacity(self.host._capacity_message(refusal))
        try:
            self.state.resolve_initial_voice()
        except RealtimeError as exc:
            self.host.metrics.rejected(ENDPOINT, "bad_request")
            raise BadSessionRequest(exc.message) from None

    # ---- receiving ----------------------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise ClientGone()
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            try:
                await self._handle(parse_client_event(data))
            except RealtimeError as exc:
                await self.send(exc.event())

    async def _handle(self, event: ClientEvent) -> None:
        recorder = self.engine.recorder
        if recorder is not None and event.kind != "append":
            recorder.event({"direction": "in", "type": event.kind, "event_id": event.event_id})
        engine, state = self.engine, self.state
        if event.kind == "session.update":
            await self.updates.submit(event.changes)  # type: ignore[arg-type]
        elif event.kind == "append":
            engine.want()
            pcm = state.codec.decode(event.audio, event.event_id)  # type: ignore[union-attr, arg-type]
            if pcm.size:  # a G.711 resampler may hold its first samples back
                engine.offer(pcm, event.event_id)
        elif event.kind == "commit":
            await engine.turns.commit(event.event_id)
        elif event.kind == "clear":
            await self.send(engine.turns.clear())
        elif event.kind == "response.create":
            await self._response_create(event)
        elif event.kind == "response.cancel":
            if event.response_id is not None and event.response_id != self.responses.response_id:
                raise RealtimeError(f"Cancellation failed: response {event.response_id} is not in progress.",
                                    "response_cancel_not_active", param="response_id", event_id=event.event_id)
            for out in self.responses.cancel("client_cancelled"):
                await self.send(out)
            await engine.cancel_answer("client_cancelled")
        elif event.kind == "item.truncate":
            await self.send(self.responses.conversation.truncated(event.item_id, event.audio_end_ms,  # type: ignore[arg-type]
                                                                  event.event_id))
        elif event.kind == "item.create":
            await self._typed_message(event)
        elif event.kind == "function_output":
            for out in engine.function_output(event.function_output, event.event_id):  # type: ignore[arg-type]
                await self.send(out)

    async def _response_create(self, event: ClientEvent) -> None:
        """Honoured (a response opens now, with its metadata) or refused (``error`` with the event_id)."""
        s = self.state.settings
        request = check_response(event.response, event_id=event.event_id,  # type: ignore[arg-type]
                                 instructions=s.instructions, voice=s.engine_voice, output_format=s.output_format,
                                 conversation_id=self.state.conversation_id, resolve_voice=self.state.resolve_voice)
        self.engine.want()
        for out in self.responses.request(request):
            await self.send(out)
        self.engine.resume_answer()  # after function outputs: the answer goes on, spoken in this response

    async def _typed_message(self, event: ClientEvent) -> None:
        if self.state.settings.mode == "standalone" or self.host.qwen is None:
            why = "this session is standalone" if self.host.qwen is not None else \
                "no knowledge model (Qwen) is deployed here"
            raise RealtimeError(f"Typed messages are answered in hybrid mode only, and {why}: PersonaPlex "
                                "alone hears audio. Speak instead, or open the session with session.update mode "
                                "'hybrid' or 'auto'.", "hybrid_unavailable", param="item", event_id=event.event_id)
        self.engine.want()
        for out in self.responses.conversation.user_text_item(event.item_id or new_id("item"), event.text):  # type: ignore[arg-type]
            await self.send(out)
        self.engine.typed(event.text)  # type: ignore[arg-type]


class SessionUpdates:
    """One connection's ``session.update`` events, answered in order; live changes run in their own task."""

    def __init__(self, state: SessionState, engine: RealtimeEngine, send: Any) -> None:
        self.state = state
        self.engine = engine
        self.send = send
        self._last: asyncio.Task | None = None  # the latest update still in progress (later ones wait for it)
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, changes: SessionChanges) -> None:
        """Answer at once when nothing is in progress and no engine work is needed; otherwise queue it.
        Raises RealtimeError for an update refused at once (the receive loop sends the error)."""
        if self._last is None or self._last.done():
            update = self.state.plan(changes)
            if update.live is None:
                self.state.commit(update)
                await self.send(self.state.updated())
                return
            self._last = self._spawn(lambda: self._live(update), changes.event_id)
        else:
            previous = self._last
            self._last = self._spawn(lambda: self._after(previous, changes), changes.event_id)

    async def _after(self, previous: asyncio.Task, changes: SessionChanges) -> None:
        await asyncio.wait([previous])  # its outcome is its own (answered or refused)
        try:
            update = self.state.plan(changes)  # against the settings the earlier updates left
        except RealtimeError as exc:
            await self.send(exc.event())
            return
        if update.live is None:
            self.state.commit(update)
            await self.send(self.state.updated())
        else:
            await self._live(update)

    async def _live(self, update: SettingsUpdate) -> None:
        change = update.live
        assert change is not None
        try:
            result = await self.engine.change_prompt(change)
        except RealtimeError as exc:
            await self.send(exc.event())  # nothing changed: the old persona and voice stay
            return
        self.state.commit(update)
        await self.send(self.state.updated(change.report(result)))

    def _spawn(self, work: Callable[[], Awaitable[None]], event_id: str | None) -> asyncio.Task:
        async def guarded() -> None:
            try:
                await work()
            except (ClientGone, SessionClosed):  # the client left, or the session is ending (its end is told)
                pass
            except Exception as exc:  # a fault here must not pass unanswered, nor end the session
                log.exception("session.update %s failed", event_id)
                with contextlib.suppress(ClientGone):
                    await self.send(error_event(f"session.update failed ({type(exc).__name__}); the session keeps "
                                                "its settings.", "server_error", error_type="server_error",
                                                event_id=event_id))

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _DrainHandle:
    """``event``/``fail`` like an ``Outbox``, for VoiceServer.drain (``bizra.session.draining``, then 1001)."""

    def __init__(self, session: RealtimeSession) -> None:
        self.session = session

    async def event(self, event: dict[str, Any]) -> None:
        with contextlib.suppress(ClientGone):
            await self.session.send(E.extension(event))

    async def fail(self, message: str, code: int) -> None:
        await self.session.fail(message, "server_draining", code)
