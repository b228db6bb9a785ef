"""A client that stops reading: the outbound buffer stays bounded, drops oldest audio, keeps text, closes 4408."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bizra_voice import protocol as P
from bizra_voice.constants import FRAME_SIZE
from bizra_voice.engine.api import FrameOutput, SessionClosed
from bizra_voice.serve.backpressure import ClientTooSlow, OutboundBuffer, Outgoing
from bizra_voice.serve.ws_session import ChatSession, Outbox


def frame(k: int, text: str | None = None) -> Outgoing:
    return Outgoing(k, np.zeros(FRAME_SIZE, np.float32), [text] if text else [])


def test_buffer_drops_oldest_audio_keeps_text_then_fails():
    buf = OutboundBuffer(max_frames=3, close_after_dropped=4)
    for k in range(6):
        buf.put(frame(k, f"w{k}"))
    assert len(buf) == 3 and buf.dropped_frames == 3 and buf.high_water == 3
    items = [buf._items[i] for i in range(3)]
    assert [i.frame for i in items] == [3, 4, 5]
    assert items[0].texts == ["w0", "w1", "w2", "w3"]  # text of dropped frames rides on the oldest kept one
    with pytest.raises(ClientTooSlow, match=r"4 frames of audio \(0\.3 s\) were dropped and 7 text pieces"):
        buf.put(frame(6, "w6"))
    with pytest.raises(ClientTooSlow):
        buf.put(frame(7))


def test_buffer_get_in_order():
    async def scenario():
        buf = OutboundBuffer(max_frames=5)
        getter = asyncio.create_task(buf.get())
        await asyncio.sleep(0)
        buf.put(frame(0))
        buf.put(frame(1))
        return (await getter).frame, (await buf.get()).frame

    assert asyncio.run(scenario()) == (0, 1)


class StalledSocket:
    """A WebSocket whose peer stopped reading: the first sends go through, then send blocks forever."""

    def __init__(self, accept: int) -> None:
        self.accept = accept
        self.sent: list[bytes] = []
        self.closed_with: tuple[int, str] | None = None
        self._never = asyncio.Event()

    async def send_bytes(self, data: bytes) -> None:
        if len(self.sent) >= self.accept and data[0] != P.Kind.ERROR:
            await self._never.wait()
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = (code, reason)

    async def receive(self) -> dict:
        await self._never.wait()
        return {"type": "websocket.disconnect"}


class FakeLive:
    """Engine side: produces a frame (with a text piece) every tick, like LiveSession."""

    session_id = "fake"
    reanchors = 0

    def __init__(self, frames: int) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        for k in range(frames):
            self.queue.put_nowait(FrameOutput(k, np.zeros(FRAME_SIZE, np.float32), 5, f" w{k}",
                                              np.zeros(8, np.int64)))
        self.queue.put_nowait(SessionClosed("done"))

    async def next_output(self):
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        await asyncio.sleep(0)
        return item

    def push_pcm(self, pcm) -> None:
        pass


def test_stalled_client_is_closed_4408_with_counts_and_memory_stays_bounded():
    async def scenario():
        ws = StalledSocket(accept=10)
        session = ChatSession(ws, Outbox(ws), FakeLive(400), stats_interval_s=60,
                              outbound=OutboundBuffer(max_frames=25, close_after_dropped=100))
        await asyncio.wait_for(session.run(), 10)
        return ws, session

    ws, session = asyncio.run(scenario())
    assert session.outbound.high_water <= 25
    code, reason = ws.closed_with
    assert code == P.CloseCode.TOO_SLOW == 4408
    assert "stopped reading" in reason and "100 frames of audio (8.0 s) were dropped" in reason
    error = [P.decode(m) for m in ws.sent if m[0] == P.Kind.ERROR]
    assert error and "text pieces were not delivered" in error[0].text()


def test_reading_client_gets_every_frame_and_all_text():
    async def scenario():
        ws = StalledSocket(accept=10**9)
        session = ChatSession(ws, Outbox(ws), FakeLive(60), stats_interval_s=60,
                              outbound=OutboundBuffer(max_frames=25, close_after_dropped=100))
        await asyncio.wait_for(session.run(), 10)
        return ws, session

    ws, session = asyncio.run(scenario())
    texts = [P.decode(m).text() for m in ws.sent if m[0] == P.Kind.TEXT]
    assert texts == [f" w{k}" for k in range(60)]
    assert session.frames_out == 60 and session.outbound.dropped_frames == 0
    assert ws.closed_with[0] == 1000


def test_engine_output_queue_is_bounded():
    """LiveSession ends itself instead of queueing more than MAX_OUTPUT_FRAMES unread frames."""
    from bizra_voice.engine.runtime import LiveSession

    async def scenario():
        live = LiveSession(runtime=None, session_id="s", slot=0, voice="V", seed=0, prompt_positions=0,
                           loop=asyncio.get_running_loop())
        live.max_output_frames = 10
        for k in range(50):
            live._deliver(FrameOutput(k, np.zeros(FRAME_SIZE, np.float32), 0, None, np.zeros(8, np.int64)))
        return live

    live = asyncio.run(scenario())
    assert live._outputs.qsize() == 11  # 10 frames + the SessionClosed that reports it
    assert live.closed and "not read" in live.close_reason and live.outputs_dropped == 40
