"""The ``oai-events`` data channel as the socket a ``RealtimeSession`` reads and writes.

A WebRTC Realtime call carries the same JSON events as ``/v1/realtime``'s WebSocket, on a data channel
the client opens (OpenAI names it ``oai-events``). ``ChannelSocket`` offers what ``RealtimeSession`` uses of
a Starlette WebSocket - ``receive``, ``send_text``, ``close``, ``query_params``, ``headers`` - so the one
session class serves both transports. Events the server sends before the channel is open wait for it
(bounded: ``OPEN_TIMEOUT_S``, then the client is gone); the channel or the peer connection closing is a
disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

OPEN_TIMEOUT_S = 20.0
CLOSE_FLUSH_S = 3.0  # at most this long for the last events to reach SCTP when the server ends a call
CLOSE_PAUSE_S = 0.3
EVENTS_LABEL = "oai-events"


class ChannelGone(Exception):
    """The data channel closed or never opened."""


class ChannelSocket:
    def __init__(self, query_params: Any, headers: Any, on_close: Callable[[], Awaitable[None]]) -> None:
        self.query_params = query_params
        self.headers = headers
        self._on_close = on_close
        self._channel: Any = None
        self._open = asyncio.Event()
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._gone = False

    def attach(self, channel: Any) -> None:
        """The client's data channel (``RTCDataChannel``): its messages become received events."""
        self._channel = channel

        @channel.on("open")
        def _opened() -> None:
            self._open.set()

        @channel.on("message")
        def _message(message: str | bytes) -> None:
            if isinstance(message, str):
                self._inbox.put_nowait({"type": "websocket.receive", "text": message})
            else:
                self._inbox.put_nowait({"type": "websocket.receive", "bytes": message})

        @channel.on("close")
        def _closed() -> None:
            self.disconnected()

        if channel.readyState == "open":
            self._open.set()

    def disconnected(self) -> None:
        """The peer went away (channel closed, connection failed, hang-up)."""
        if not self._gone:
            self._gone = True
            self._inbox.put_nowait({"type": "websocket.disconnect", "code": 1006})

    async def receive(self) -> dict[str, Any]:
        return await self._inbox.get()

    async def send_text(self, text: str) -> None:
        if self._gone:
            raise ChannelGone()
        if not self._open.is_set():
            try:
                await asyncio.wait_for(self._open.wait(), OPEN_TIMEOUT_S)
            except asyncio.TimeoutError:
                self.disconnected()
                raise ChannelGone(f"the {EVENTS_LABEL} data channel did not open within {OPEN_TIMEOUT_S:g} s") \
                    from None
        if self._channel.readyState != "open":
            self.disconnected()
            raise ChannelGone()
        self._channel.send(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """End the call: the last events (an ending's ``error``) leave first, then the channel and the peer
        connection close. ``bufferedAmount`` only says the data reached SCTP, not the wire, hence the pause."""
        self._gone = True
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            loop = asyncio.get_running_loop()
            deadline = loop.time() + CLOSE_FLUSH_S
            while getattr(channel, "bufferedAmount", 0) and loop.time() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(CLOSE_PAUSE_S)
            with contextlib.suppress(Exception):
                channel.close()  # an SCTP stream reset, queued behind the data
            await asyncio.sleep(CLOSE_PAUSE_S)
        with contextlib.suppress(Exception):
            await self._on_close()
