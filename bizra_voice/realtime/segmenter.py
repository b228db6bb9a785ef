"""When a full-duplex model is "responding": responses cut from a stream that has no request/response.

PersonaPlex listens and speaks at once, so responses are found in its output: a frame *speaks* when it
carries a text piece or its audio RMS is at least ``speech_rms`` (-40 dBFS). The first speaking frame
opens a response; ``end_silence_frames`` (10 = 800 ms) non-speaking frames in a row close it. A response
the client asked for (``response.create``) is opened at once and waits up to ``reply_wait_frames`` for the
model's first speaking frame before it closes empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SegmenterConfig:
    end_silence_frames: int = 10  # 800 ms of silence closes a response
    speech_rms: float = 0.01  # -40 dBFS
    reply_wait_frames: int = 38  # ~3 s: how long a requested response waits for the model to speak


@dataclass
class SegmentStep:
    started: bool = False  # this frame opened a response
    in_response: bool = False  # this frame belongs to the open response (send it)
    ended: bool = False  # the response closed after this frame


@dataclass
class ResponseSegmenter:
    """Open on the first speaking frame (or on request), close after a silence."""

    config: SegmenterConfig = field(default_factory=SegmenterConfig)
    active: bool = False
    silent_frames: int = 0
    waiting: bool = False  # opened on request; the model has not spoken in it yet

    def speaks(self, text: str, pcm: np.ndarray) -> bool:
        if text.strip():
            return True
        samples = np.asarray(pcm, np.float32)
        return bool(samples.size) and float(np.sqrt(np.mean(samples * samples))) >= self.config.speech_rms

    def step(self, text: str, pcm: np.ndarray) -> SegmentStep:
        speaking = self.speaks(text, pcm)
        if not self.active:
            if not speaking:
                return SegmentStep()
            self.active, self.silent_frames = True, 0
            return SegmentStep(started=True, in_response=True)
        if speaking:
            self.waiting, self.silent_frames = False, 0
        else:
            self.silent_frames += 1
        limit = self.config.reply_wait_frames if self.waiting else self.config.end_silence_frames
        if self.silent_frames >= limit:
            self.active, self.waiting, self.silent_frames = False, False, 0
            return SegmentStep(in_response=True, ended=True)
        return SegmentStep(in_response=True)

    def open_now(self) -> None:
        """A response was requested: the frames from now on belong to it, speaking or not."""
        self.active, self.waiting, self.silent_frames = True, True, 0

    def cancel(self) -> bool:
        """Close the open response now; True when one was open."""
        was = self.active
        self.active, self.waiting, self.silent_frames = False, False, 0
        return was
