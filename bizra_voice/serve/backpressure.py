"""Bounded outbound buffering for one session: a client that stops reading cannot grow server memory.

The engine produces one frame every 80 ms whether or not the client reads. Frames wait here, as PCM (not
yet Opus-encoded), until the socket writer takes them. Drop policy when the client falls behind:

- at most ``max_frames`` frames wait; when one more arrives, the OLDEST frame's audio is dropped (live
  speech that is seconds late is useless; dropping PCM before encoding keeps the client's Ogg stream
  valid, so playback simply skips ahead);
- text is never dropped: a dropped frame's text piece is carried onto the next kept frame, so the
  transcript stays complete;
- once ``close_after_dropped`` frames' audio has been dropped, the session is ended with close 4408 and a
  reason that says how much audio was dropped and how many text pieces were left undelivered.

Pure asyncio, no Ray: unit-tested with a stalled fake socket.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

import numpy as np

from bizra_voice.constants import FRAME_MS
from bizra_voice.serve.endings import ClientTooSlow

DEFAULT_MAX_FRAMES = 25  # 2 s of output may wait for a slow client
DEFAULT_CLOSE_AFTER_DROPPED = 125  # 10 s of audio dropped -> close 4408


@dataclass
class Outgoing:
    """One frame waiting to be sent: its PCM and the text pieces that go with it (in order)."""

    frame: int
    pcm: np.ndarray
    texts: list[str] = field(default_factory=list)
    text_token: int = 0


class OutboundBuffer:
    """Between the engine pump (``put``, never blocks) and the socket writer (``get``)."""

    def __init__(self, max_frames: int = DEFAULT_MAX_FRAMES,
                 close_after_dropped: int = DEFAULT_CLOSE_AFTER_DROPPED) -> None:
        if max_frames < 1 or close_after_dropped < 1:
            raise ValueError("max_frames and close_after_dropped must be positive")
        self.max_frames = max_frames
        self.close_after_dropped = close_after_dropped
        self._items: collections.deque[Outgoing] = collections.deque()
        self._ready = asyncio.Event()
        self.dropped_frames = 0
        self.high_water = 0
        self.failed: ClientTooSlow | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def pending_texts(self) -> int:
        return sum(len(item.texts) for item in self._items)

    def put(self, item: Outgoing) -> None:
        """Queue a frame; drop the oldest frame's audio when full; raise ClientTooSlow past the limit."""
        if self.failed is not None:
            raise self.failed
        if len(self._items) >= self.max_frames:
            oldest = self._items.popleft()
            self.dropped_frames += 1
            if oldest.texts:
                target = self._items[0] if self._items else item
                target.texts[:0] = oldest.texts
        self._items.append(item)
        self.high_water = max(self.high_water, len(self._items))
        self._ready.set()
        if self.dropped_frames >= self.close_after_dropped:
            self.failed = ClientTooSlow(
                f"the client stopped reading: {self.dropped_frames} frames of audio "
                f"({self.dropped_frames * FRAME_MS / 1000:.1f} s) were dropped and {self.pending_texts} text "
                f"pieces were not delivered")
            raise self.failed

    async def get(self) -> Outgoing:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def stats(self) -> dict[str, int]:
        return {"queued": len(self._items), "high_water": self.high_water, "dropped_frames": self.dropped_frames}
