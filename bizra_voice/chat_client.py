"""A moshi-protocol client for ``/api/chat``: streams PCM as Ogg/Opus in real time and records what returns.

Used by the serving tests and ``scripts/rtt_probe.py``; any moshi/PersonaPlex client speaks the same
protocol. Round trip of a frame = time from sending input frame k to receiving the output frame the
server produced for it (outputs lag inputs by a constant number of frames, measured after draining).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bizra_voice import protocol as P
from bizra_voice.audio import OggOpusDecoder, OggOpusEncoder
from bizra_voice.constants import FRAME_MS, FRAME_SIZE


@dataclass
class ChatResult:
    handshake_s: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    text_pieces: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    close_code: int | None = None
    frames_sent: int = 0
    send_times: list[float] = field(default_factory=list)
    out_pcm: list[np.ndarray] = field(default_factory=list)
    out_frame_times: list[float] = field(default_factory=list)  # arrival time of each decoded output frame
    ogg_bytes: int = 0

    @property
    def frames_received(self) -> int:
        return len(self.out_frame_times)

    @property
    def pcm(self) -> np.ndarray:
        return np.concatenate(self.out_pcm) if self.out_pcm else np.zeros(0, np.float32)

    def event(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("type") == kind), None)

    def round_trips_ms(self) -> np.ndarray:
        """Per-frame round trips, pairing output j with input j + lag (lag = sent - received)."""
        lag = max(0, self.frames_sent - self.frames_received)
        pairs = [(self.out_frame_times[j] - self.send_times[j + lag]) * 1000.0
                 for j in range(self.frames_received) if j + lag < len(self.send_times)]
        return np.asarray(pairs, dtype=np.float64)


def chat_url(base_url: str, **params: Any) -> str:
    """The ``/api/chat`` URL; ours asks for the JSON events (``events=1``) unless ``events=None`` is given,
    which makes it a plain moshi/PersonaPlex client."""
    ws = base_url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/")
    params = {"events": 1, **params}
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return f"{ws}/api/chat" + (f"?{query}" if query else "")


async def run_chat(url: str, pcm: np.ndarray | None, *, realtime: bool = True, drain_s: float = 1.5,
                   handshake_timeout_s: float = 60.0, hold_s: float = 0.0) -> ChatResult:
    """Connect, wait for the handshake, stream ``pcm`` frame by frame, drain, close; return what came back.

    ``pcm=None`` holds the session open ``hold_s`` seconds without audio. Errors (0x05 + close) end early.
    """
    import websockets

    result = ResultCollector()
    start = time.monotonic()
    async with websockets.connect(url, compression=None, max_size=None, open_timeout=30) as ws:
        reader = asyncio.create_task(result.read(ws, start))
        try:
            await asyncio.wait_for(asyncio.shield(result.handshake), timeout=handshake_timeout_s)
        except asyncio.TimeoutError:
            reader.cancel()
            raise
        if not result.handshake.result():
            await reader
            return result.data
        if pcm is not None:
            encoder = OggOpusEncoder()
            t0 = time.monotonic()
            for k in range(len(pcm) // FRAME_SIZE):
                if reader.done():
                    break
                if realtime:
                    await asyncio.sleep(max(0.0, t0 + k * FRAME_MS / 1000.0 - time.monotonic()))
                ogg = encoder.encode(pcm[k * FRAME_SIZE:(k + 1) * FRAME_SIZE])
                result.data.send_times.append(time.monotonic())
                result.data.frames_sent += 1
                if ogg:
                    await ws.send(P.audio(ogg))
            await result.quiet(drain_s)
        else:
            await asyncio.sleep(hold_s)
        if not reader.done():
            await ws.close()
        await asyncio.gather(reader, return_exceptions=True)
    return result.data


class ResultCollector:
    """Reads server messages into a ChatResult; resolves ``handshake`` True on 0x00, False on early close."""

    def __init__(self) -> None:
        self.data = ChatResult()
        self.handshake: asyncio.Future[bool] = asyncio.get_event_loop().create_future()
        self.decoder = OggOpusDecoder()
        self._pending = np.zeros(0, np.float32)
        self.last_rx = time.monotonic()

    async def read(self, ws, start: float) -> None:
        import websockets

        try:
            async for raw in ws:
                now = time.monotonic()
                self.last_rx = now
                if isinstance(raw, str):
                    self.data.errors.append(f"unexpected text frame: {raw[:80]}")
                    continue
                msg = P.decode(raw, max_bytes=1 << 24)
                if msg.kind == P.Kind.HANDSHAKE:
                    self.data.handshake_s = now - start
                    if not self.handshake.done():
                        self.handshake.set_result(True)
                elif msg.kind == P.Kind.AUDIO:
                    self.data.ogg_bytes += len(msg.payload)
                    pcm = self.decoder.decode(msg.payload)
                    buf = np.concatenate([self._pending, pcm])
                    whole = buf.size // FRAME_SIZE
                    for i in range(whole):
                        self.data.out_pcm.append(buf[i * FRAME_SIZE:(i + 1) * FRAME_SIZE])
                        self.data.out_frame_times.append(now)
                    self._pending = buf[whole * FRAME_SIZE:]
                elif msg.kind == P.Kind.TEXT:
                    self.data.text_pieces.append(msg.payload.decode("utf-8"))  # raises on invalid UTF-8
                elif msg.kind == P.Kind.METADATA:
                    self.data.events.append(json.loads(msg.payload.decode("utf-8")))
                elif msg.kind == P.Kind.ERROR:
                    self.data.errors.append(msg.payload.decode("utf-8"))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.data.close_code = ws.close_code
            if not self.handshake.done():
                self.handshake.set_result(False)

    async def quiet(self, seconds: float, limit_s: float = 15.0) -> None:
        """Wait until nothing has arrived for ``seconds`` (bounded by ``limit_s``)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and time.monotonic() - self.last_rx < seconds:
            await asyncio.sleep(0.05)
