"""Plays bursty audio into a real-time consumer on schedule: one frame per frame period, never faster.

Clients do not always send audio in real time: one message may carry seconds of it, audio piles up while
the engine session is still opening (its prefill takes ~2 s on a slow machine), and a client that
reconnects sends its backlog at once. PersonaPlex hears exactly one 80 ms frame per 80 ms; its runtime
drops the OLDEST queued input frames when it is fed faster than it can step. The pacer sits between the
two:

- ``offer`` buffers what arrived, up to ``max_buffered_s`` of audio not yet played; the excess is refused
  and the caller is told how much (it tells the client) - nothing is lost silently;
- ``run`` hands whole frames to ``sink`` on the monotonic clock: at most ``1 + slack_frames`` at once, then
  one per period (a token bucket, so the long-run rate is exactly real time). A client that already sends
  in real time is passed through at once: pacing adds no latency to it;
- ``kick`` (optional) tells the pacer the consumer has caught up with everything it was given; a frame
  that is not yet due may then go early. This drains a backlog (the audio that arrived during the
  engine's open) as fast as the consumer can really take it, without ever queueing in front of it, so
  the delay of a slow open does not stay in the conversation for good.

Pure asyncio: no engine, no sockets; any transport can use it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from bizra_voice import constants as C

Sink = Callable[[np.ndarray], Awaitable[None]]
_EPSILON_S = 1e-6  # a frame this close to its due time is due (float sums of periods drift by ~1e-17)


@dataclass(frozen=True)
class Offered:
    """What ``offer`` did with a chunk: samples taken, and samples refused because the buffer was full."""

    accepted: int
    refused: int


class AudioPacer:
    """A bounded FIFO of float32 samples, played out frame by frame at the audio's own rate."""

    def __init__(self, *, frame_samples: int = C.FRAME_SIZE, sample_rate: int = C.SAMPLE_RATE,
                 max_buffered_s: float = 30.0, slack_frames: int = 1,
                 caught_up: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.frame_samples = frame_samples
        self.frame_s = frame_samples / sample_rate
        self.max_samples = int(max_buffered_s * sample_rate)
        self.slack_s = slack_frames * self.frame_s
        self.caught_up = caught_up  # True: the consumer has taken everything, a frame may go early
        self.clock = clock
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._buffered = 0
        self._due: float | None = None  # when the next frame is due (the bucket's theoretical time)
        self._wake = asyncio.Event()
        self.frames_played = 0
        self.frames_early = 0  # played before they were due, into a consumer that had caught up
        self.samples_refused = 0

    @property
    def buffered_s(self) -> float:
        """Seconds of audio offered and not yet played (the partial last frame included)."""
        return self._buffered * self.frame_s / self.frame_samples

    def offer(self, pcm: np.ndarray) -> Offered:
        """Queue mono float32 samples; what would exceed ``max_buffered_s`` is refused (reported)."""
        samples = np.asarray(pcm, dtype=np.float32).reshape(-1)
        room = max(0, self.max_samples - self._buffered)
        taken = samples[:room]
        if taken.size:
            self._chunks.append(taken)
            self._buffered += taken.size
            self._wake.set()
        refused = samples.size - taken.size
        self.samples_refused += refused
        return Offered(int(taken.size), int(refused))

    def kick(self) -> None:
        """The consumer made progress: look again whether a frame may go (see ``caught_up``)."""
        self._wake.set()

    async def run(self, sink: Sink) -> None:
        """Play frames into ``sink`` until cancelled; an exception of ``sink`` ends the run with it."""
        while True:
            if self._buffered < self.frame_samples:
                await self._sleep(None)
                continue
            now = self.clock()
            wait = 0.0 if self._due is None else self._due - self.slack_s - now
            if wait <= _EPSILON_S:
                wait = 0.0
            early = wait > 0 and self.caught_up is not None and self.caught_up()
            if wait > 0 and not early:
                await self._sleep(wait)
                continue
            if early:
                self.frames_early += 1
            else:
                self._due = max(self._due if self._due is not None else now, now) + self.frame_s
            self.frames_played += 1
            await sink(self._take_frame())

    def _take_frame(self) -> np.ndarray:
        need = self.frame_samples
        parts = []
        while need:
            head = self._chunks[0]
            if head.size <= need:
                parts.append(self._chunks.popleft())
                need -= head.size
            else:
                parts.append(head[:need])
                self._chunks[0] = head[need:]
                need = 0
        self._buffered -= self.frame_samples
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _sleep(self, timeout: float | None) -> None:
        """Until new audio or a kick arrives, or ``timeout`` seconds pass."""
        self._wake.clear()
        waiter = asyncio.ensure_future(self._wake.wait())
        try:  # asyncio.wait, not wait_for: wait_for (3.11) can swallow a cancel that meets a wake-up
            await asyncio.wait({waiter}, timeout=timeout)
        finally:
            waiter.cancel()
