"""Cut a PCM stream of arbitrary chunk sizes into fixed 80 ms model frames."""

from __future__ import annotations

import numpy as np

from bizra_voice.constants import FRAME_SIZE


class FrameBuffer:
    """Accumulates float32 mono PCM and hands out whole frames of ``frame_size`` samples, in order."""

    def __init__(self, frame_size: int = FRAME_SIZE) -> None:
        if frame_size <= 0:
            raise ValueError("frame_size must be positive")
        self.frame_size = frame_size
        self._pending = np.zeros(0, dtype=np.float32)

    @property
    def pending(self) -> int:
        """Samples held back until a frame is complete."""
        return int(self._pending.shape[0])

    def push(self, pcm: np.ndarray) -> list[np.ndarray]:
        """Add samples; return the frames completed by them (possibly none)."""
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        buf = np.concatenate([self._pending, pcm]) if self._pending.size else pcm
        whole = buf.shape[0] // self.frame_size
        frames = [buf[i * self.frame_size:(i + 1) * self.frame_size].copy() for i in range(whole)]
        self._pending = buf[whole * self.frame_size:].copy()
        return frames

    def flush(self) -> np.ndarray | None:
        """The last partial frame zero-padded to a whole frame, or None when nothing is pending."""
        if not self._pending.size:
            return None
        frame = np.zeros(self.frame_size, dtype=np.float32)
        frame[: self._pending.size] = self._pending
        self._pending = np.zeros(0, dtype=np.float32)
        return frame


def split_frames(pcm: np.ndarray, frame_size: int = FRAME_SIZE, pad_last: bool = True) -> list[np.ndarray]:
    """A whole signal as frames (the last one zero-padded when ``pad_last``)."""
    buf = FrameBuffer(frame_size)
    frames = buf.push(pcm)
    if pad_last:
        tail = buf.flush()
        if tail is not None:
            frames.append(tail)
    return frames
