"""G.711 telephony audio (8 kHz μ-law / A-law) <-> the model's 24 kHz float PCM, streamed.

For ``/v1/realtime`` clients that bridge phone calls (``audio/pcmu``, ``audio/pcma``). The codec is the
standard library's ``audioop`` (the ``audioop-lts`` package provides it from Python 3.13); the rate conversion
is libsoxr (``soxr``) in streaming mode, whose filter state carries over from one chunk to the next, so 80 ms
frames and arbitrary client chunks join without seams. Quality "LQ": 12.5 ms of resampler delay each way
(HQ would hold back 42.7 ms) while its error stays far below G.711's own (~38 dB SNR).
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import soxr

from bizra_voice.constants import SAMPLE_RATE

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # stdlib audioop warns on 3.11/3.12; kept on purpose
    import audioop

TELEPHONY_RATE = 8000
Law = Literal["ulaw", "alaw"]


class G711Decoder:
    """G.711 bytes at 8 kHz -> float32 PCM at 24 kHz, chunk by chunk."""

    def __init__(self, law: Law) -> None:
        self._to_linear = audioop.ulaw2lin if law == "ulaw" else audioop.alaw2lin
        self._upsample = soxr.ResampleStream(TELEPHONY_RATE, SAMPLE_RATE, 1, dtype="float32", quality="LQ")

    def decode(self, payload: bytes) -> np.ndarray:
        linear = np.frombuffer(self._to_linear(payload, 2), dtype=np.int16).astype(np.float32) / 32768.0
        return self._upsample.resample_chunk(linear)


class G711Encoder:
    """float32 PCM at 24 kHz -> G.711 bytes at 8 kHz, chunk by chunk (sizes follow the resampler's output)."""

    def __init__(self, law: Law) -> None:
        self._from_linear = audioop.lin2ulaw if law == "ulaw" else audioop.lin2alaw
        self._downsample = soxr.ResampleStream(SAMPLE_RATE, TELEPHONY_RATE, 1, dtype="float32", quality="LQ")

    def encode(self, pcm: np.ndarray) -> bytes:
        narrow = self._downsample.resample_chunk(np.asarray(pcm, np.float32).reshape(-1))
        linear = (np.clip(narrow, -1.0, 1.0) * 32767.0).round().astype(np.int16)
        return self._from_linear(linear.tobytes(), 2)
