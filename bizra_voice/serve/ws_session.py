"""One ``/api/chat`` WebSocket session on the replica that owns its engine slot.

Receiver: 0x01 Ogg/Opus -> PCM -> ``session.push_pcm``; 0x04 JSON -> client event handlers.
Sender: ``session.next_output()`` -> 0x01 Ogg/Opus + 0x02 text. A stats task sends ``session.stats``.
Every end the server causes reaches the client as 0x05 plus a close code chosen in one place
(``serve/endings.py``: 1008 bad request, 1013 overloaded or at capacity, 4408 too slow, 1011 internal).
Framework-light on purpose: it needs only ``receive()``/``send_bytes()``/``close()`` of a Starlette
WebSocket, so the same loop can be driven by other transports later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bizra_voice import protocol as P
from bizra_voice.audio import InvalidAudio, OggOpusDecoder, OggOpusEncoder
from bizra_voice.engine.api import BadSessionRequest, EndCause, SessionClosed
from bizra_voice.serve.backpressure import OutboundBuffer, Outgoing
from bizra_voice.serve.endings import ClientGone, ClientProtocolError, Ending, ending_for, log_ending

__all__ = ["ChatSession", "ClientGone", "ClientProtocolError", "Outbox", "SessionRecord", "check_first_message"]

log = logging.getLogger("ray.serve")

ClientEventHandler = Callable[["ChatSession", dict[str, Any]], Awaitable[None]]


def check_first_message(message: dict[str, Any]) -> None:
    """A message that arrived before the server's handshake: audio then is a protocol error."""
    data = message.get("bytes")
    if data and data[0] == P.Kind.AUDIO:
        raise ClientProtocolError("audio arrived before the server's handshake (0x00); wait for it, then stream")


@dataclass
class SessionRecord:
    """TEST HOOK data: what the engine was fed and what it produced (written when debug recording is on)."""

    input_pcm: list[np.ndarray] = field(default_factory=list)
    text_tokens: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)

    def save(self, path: Path) -> None:
        pcm = np.concatenate(self.input_pcm) if self.input_pcm else np.zeros(0, np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, input_pcm=pcm.astype(np.float32), text_tokens=np.asarray(self.text_tokens, np.int64),
                 frames=np.asarray(self.frames, np.int64))
        tmp.replace(path)


class Outbox:
    """Serialises sends from the sender, receiver and stats tasks onto one WebSocket.

    ``events``: whether this client asked for our JSON events (``events=1``). Without it the client gets
    only what the reference servers send (handshake, audio, text, 0x05 errors): moshi/PersonaPlex clients
    read any 0x04 as the Rust server's info object and log an error (or a warning) for each of ours.
    """

    def __init__(self, ws, events: bool = True) -> None:
        self._ws = ws
        self._lock = asyncio.Lock()
        self.closed = False
        self.events = events

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise ClientGone()
        async with self._lock:
            try:
                await self._ws.send_bytes(data)
            except Exception as exc:  # starlette raises several types once the peer is gone
                self.closed = True
                raise ClientGone() from exc

    async def event(self, event: dict[str, Any]) -> None:
        if self.events:
            await self.send(P.metadata(event))

    async def fail(self, message: str, code: int) -> None:
        """Send 0x05 + close with ``code``; never raises (the client may already be gone)."""
        if self.closed:
            return
        try:
            async with self._lock:
                await self._ws.send_bytes(P.error(message))
                await self._ws.close(code=code, reason=message[:120])
        except Exception:
            pass
        self.closed = True

    async def close(self, code: int = P.CloseCode.NORMAL) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            async with self._lock:
                await self._ws.close(code=code)
        except Exception:
            pass


class ChatSession:
    """Runs one live engine session against one WebSocket until either side ends it."""

    def __init__(self, ws, outbox: Outbox, live, *, stats_interval_s: float = 2.0,
                 stats_source: Callable[[], dict] | None = None, record: SessionRecord | None = None,
                 max_message_bytes: int = P.MAX_MESSAGE_BYTES, outbound: OutboundBuffer | None = None,
                 first_receive: asyncio.Task | None = None) -> None:
        self.ws = ws
        self.out = outbox
        self.live = live
        self.stats_interval_s = stats_interval_s
        self.stats_source = stats_source
        self.record = record
        self.max_message_bytes = max_message_bytes
        self.outbound = outbound if outbound is not None else OutboundBuffer()
        self._first_receive = first_receive  # a receive() started before the handshake (see VoiceServer.chat)
        self.decoder = OggOpusDecoder()
        self.encoder = OggOpusEncoder()
        self.frames_in_samples = 0
        self.frames_out = 0
        self.text_pieces = 0
        self.started = time.monotonic()
        self.handlers: dict[str, ClientEventHandler] = {"client.ping": ChatSession._on_client_ping}
        # Synchronous observers (hybrid mode): decoded user PCM, and every frame the engine produced.
        self.input_listeners: list[Callable[[np.ndarray], None]] = []
        self.output_listeners: list[Callable[[Any], None]] = []
        self._flush_then_raise: SessionClosed | None = None  # the engine's end, raised once output is flushed

    def on(self, event_type: str, handler: ClientEventHandler) -> None:
        """Register a handler for a client JSON event type (e.g. hybrid mode's ``user.text``)."""
        self.handlers[event_type] = handler

    async def _on_client_ping(self, event: dict[str, Any]) -> None:
        await self.out.event({"type": "client.pong", "t": event.get("t")})

    async def receive_loop(self) -> None:
        while True:
            if self._first_receive is not None:
                first, self._first_receive = self._first_receive, None
                message = await first
            else:
                message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise ClientGone()
            data = message.get("bytes")
            if data is None:
                raise ClientProtocolError("text WebSocket frames are not part of the protocol; send binary",
                                          P.CloseCode.UNSUPPORTED)
            try:
                msg = P.decode(data, self.max_message_bytes)
            except P.ProtocolError as exc:
                raise ClientProtocolError(str(exc), exc.close_code) from None
            if msg.kind == P.Kind.AUDIO:
                try:
                    pcm = self.decoder.decode(msg.payload)
                except InvalidAudio as exc:
                    raise ClientProtocolError(str(exc)) from None
                if pcm.size:
                    self.frames_in_samples += int(pcm.size)
                    if self.record is not None:
                        self.record.input_pcm.append(pcm)
                    try:
                        self.live.push_pcm(pcm)
                    except BadSessionRequest as exc:
                        raise ClientProtocolError(str(exc)) from None
                    except SessionClosed as exc:
                        if exc.cause is EndCause.CLIENT:
                            return
                        raise  # the engine ended the session: run() tells the client why
                    for listener in self.input_listeners:
                        listener(pcm)
            elif msg.kind == P.Kind.METADATA:
                try:
                    event = msg.json()
                except P.ProtocolError as exc:
                    raise ClientProtocolError(str(exc), exc.close_code) from None
                handler = self.handlers.get(str(event.get("type")))
                if handler is not None:
                    await handler(self, event)
            elif msg.kind in (P.Kind.PING, P.Kind.CONTROL):
                continue
            else:
                raise ClientProtocolError(f"clients may not send {msg.kind.name.lower()} messages")

    async def send_loop(self) -> None:
        """Engine -> bounded outbound buffer (never waits on the client; see serve/backpressure.py)."""
        writer = asyncio.create_task(self._write_loop())
        try:
            while not writer.done():
                try:
                    out = await self.live.next_output()
                except SessionClosed as exc:
                    if exc.cause is not EndCause.CLIENT:
                        self._flush_then_raise = exc
                    break
                if self.record is not None:
                    self.record.text_tokens.append(int(out.text_token))
                    self.record.frames.append(int(out.frame))
                for listener in self.output_listeners:
                    listener(out)
                self.outbound.put(Outgoing(int(out.frame), out.pcm, [out.text] if out.text else [],
                                           int(out.text_token)))
            else:
                writer.result()  # the writer only ends by raising (ClientGone)
            # the engine ended: let the writer flush what is queued (briefly), then stop it
            deadline = time.monotonic() + 2.0
            while len(self.outbound) and not writer.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        if self._flush_then_raise is not None:
            raise self._flush_then_raise

    async def _write_loop(self) -> None:
        while True:
            item = await self.outbound.get()
            ogg = self.encoder.encode(item.pcm)
            if ogg:
                await self.out.send(P.audio(ogg))
            self.frames_out += 1
            for piece in item.texts:
                self.text_pieces += 1
                await self.out.send(P.text(piece))

    def stats(self) -> dict[str, Any]:
        event = {
            "type": "session.stats",
            "session_id": self.live.session_id,
            "seconds": round(time.monotonic() - self.started, 3),
            "audio_in_s": round(self.frames_in_samples / 24000.0, 3),
            "frames_out": self.frames_out,
            "text_pieces": self.text_pieces,
            "outbound": self.outbound.stats(),
            "reanchors": getattr(self.live, "reanchors", 0),
            "input_frames_dropped": getattr(self.live, "input_frames_dropped", 0),
            # Ogg pages outside any stream (dropped) and chained streams: what a reconnecting client replays
            "ogg": {"pages_dropped": self.decoder.pages_dropped, "bytes_dropped": self.decoder.bytes_dropped,
                    "streams_chained": self.decoder.streams_chained},
        }
        if self.stats_source is not None:
            event["engine"] = self.stats_source()
        return event

    async def stats_loop(self) -> None:
        if not self.out.events:
            return await asyncio.Event().wait()  # nothing to send; ends with the session
        while True:
            await asyncio.sleep(self.stats_interval_s)
            await self.out.event(self.stats())

    async def run(self) -> Ending | None:
        """Run until the client leaves, breaks the protocol, or the server ends the session.

        Returns the ending the client was told (None for a normal end), after telling it.
        """
        tasks = [asyncio.create_task(c) for c in (self.receive_loop(), self.send_loop(), self.stats_loop())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.decoder.pages_dropped or self.decoder.streams_chained:
            log.info("session %s: %d Ogg pages outside any stream dropped (%d bytes), %d chained streams",
                     self.live.session_id, self.decoder.pages_dropped, self.decoder.bytes_dropped,
                     self.decoder.streams_chained)
        for task in done:
            exc = task.exception()
            ending = ending_for(exc)
            if ending is None:
                continue
            log_ending(self.live.session_id, ending, exc)
            await self.out.fail(ending.message, ending.close_code)
            return ending
        await self.out.close(P.CloseCode.NORMAL)
        return None

