"""Audio between a WebRTC peer and the engine: RTP Opus at 48 kHz <-> the model's 24 kHz 80 ms frames.

aiortc does the RTP side (Opus decode/encode, jitter buffer, RTCP); these two classes only convert:

- ``read_track``: the peer's decoded frames (``av.AudioFrame``, 48 kHz, mono or stereo, s16 or float) ->
  24 kHz mono float32 chunks for a sink (the Realtime engine's ``offer``, which paces them in);
- ``EngineAudioTrack``: the engine's 24 kHz frames -> 20 ms 48 kHz mono frames, paced in real time by
  ``recv`` (aiortc pulls one per 20 ms); silence when the model has nothing buffered, a flush drops what
  waits (barge-in, response.cancel), and a backlog past ``max_buffered_s`` drops the oldest audio (counted).

Resampling is libsoxr's streaming resampler (no seams at chunk boundaries), as for G.711 on /v1/realtime.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import soxr
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bizra_voice import constants as C

RTP_RATE = 48_000
PTIME_SAMPLES = RTP_RATE // 50  # 20 ms


def frame_to_mono_float(frame: Any) -> np.ndarray:
    """An ``av.AudioFrame`` as mono float32 in [-1, 1] (averaging channels)."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        samples = data.reshape(channels, -1).astype(np.float32)
        mono = samples.mean(axis=0)
    else:
        mono = data.reshape(-1, channels).astype(np.float32).mean(axis=1)
    if np.issubdtype(data.dtype, np.integer):
        mono /= float(np.iinfo(data.dtype).max + 1)
    return mono.astype(np.float32)


async def read_track(track: MediaStreamTrack, sink: Callable[[np.ndarray], None]) -> None:
    """Feed ``sink`` the peer's audio at the model's rate until the track ends."""
    resampler: soxr.ResampleStream | None = None
    rate = 0
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if resampler is None or frame.sample_rate != rate:
            rate = frame.sample_rate
            resampler = soxr.ResampleStream(rate, C.SAMPLE_RATE, 1, dtype="float32")
        pcm = resampler.resample_chunk(frame_to_mono_float(frame))
        if pcm.size:
            sink(pcm)


class EngineAudioTrack(MediaStreamTrack):
    """The assistant's voice as an outbound WebRTC audio track."""

    kind = "audio"

    def __init__(self, max_buffered_s: float = 2.0) -> None:
        super().__init__()
        self.max_samples = int(max_buffered_s * RTP_RATE)
        self._resampler = soxr.ResampleStream(C.SAMPLE_RATE, RTP_RATE, 1, dtype="float32")
        self._fifo = np.zeros(0, np.float32)
        self._started: float | None = None
        self._pts = 0
        self.frames_sent = 0
        self.samples_dropped = 0  # backlog past max_buffered_s (the peer stopped pulling)

    def push(self, pcm: np.ndarray) -> None:
        """One engine frame (24 kHz float) to be sent."""
        out = self._resampler.resample_chunk(np.asarray(pcm, np.float32))
        self._fifo = np.concatenate([self._fifo, out])
        extra = self._fifo.size - self.max_samples
        if extra > 0:
            self._fifo = self._fifo[extra:]
            self.samples_dropped += extra

    def flush(self) -> None:
        """Drop what waits to be sent (the answer was cut: barge-in, response.cancel)."""
        self._fifo = np.zeros(0, np.float32)

    async def recv(self) -> Any:
        import av

        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._started is None:
            self._started = now
        else:
            wait = self._started + self._pts / RTP_RATE - now
            if wait > 0:
                await asyncio.sleep(wait)
        chunk, self._fifo = self._fifo[:PTIME_SAMPLES], self._fifo[PTIME_SAMPLES:]
        if chunk.size < PTIME_SAMPLES:
            chunk = np.pad(chunk, (0, PTIME_SAMPLES - chunk.size))
        samples = (np.clip(chunk, -1.0, 1.0) * 32767.0).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = RTP_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RTP_RATE)
        self._pts += PTIME_SAMPLES
        self.frames_sent += 1
        return frame
