"""The session's audio formats and their codecs: base64 PCM16 at 24 kHz, or G.711 μ-law / A-law at 8 kHz.

``audio.input.format`` / ``audio.output.format`` of a ``session.update`` pick one of ``AUDIO_FORMATS``;
``AudioCodec`` turns appended bytes into the model's float PCM and its frames back into ``delta`` strings.
G.711 streams keep resampler state across chunks (``bizra_voice/audio/g711.py``), so a codec is made once
the formats are fixed (when the engine session starts).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from bizra_voice import constants as C
from bizra_voice.audio.g711 import TELEPHONY_RATE, G711Decoder, G711Encoder
from bizra_voice.realtime.errors import RealtimeError

AUDIO_FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")  # PCM16 24 kHz; G.711 μ-law / A-law 8 kHz
G711_LAW = {"audio/pcmu": "ulaw", "audio/pcma": "alaw"}


def parse_format(fmt: Any, where: str, event_id: str | None) -> str | None:
    """A session's ``audio.*.format`` object -> one of AUDIO_FORMATS (None = unchanged)."""
    if fmt is None:
        return None
    kind = fmt.get("type", "audio/pcm") if isinstance(fmt, dict) else None
    rate = fmt.get("rate") if isinstance(fmt, dict) else None
    expected_rate = C.SAMPLE_RATE if kind == "audio/pcm" else TELEPHONY_RATE
    if kind not in AUDIO_FORMATS or rate not in (None, expected_rate):
        raise RealtimeError(f"Supported formats for {where}: audio/pcm at {C.SAMPLE_RATE} Hz, audio/pcmu and "
                            f"audio/pcma (G.711 at {TELEPHONY_RATE} Hz).", "unsupported_audio_format",
                            param=f"session.{where}.format", event_id=event_id)
    return kind


def format_object(kind: str) -> dict[str, Any]:
    """The GA schema's format object (G.711 formats carry no rate: it is always 8 kHz)."""
    return {"type": kind, "rate": C.SAMPLE_RATE} if kind == "audio/pcm" else {"type": kind}


def encode_pcm16(pcm: np.ndarray) -> str:
    """float32 [-1, 1] -> base64 PCM16 little-endian."""
    samples = np.clip(np.asarray(pcm, np.float32).reshape(-1), -1.0, 1.0)
    return base64.b64encode((samples * 32767.0).round().astype("<i2").tobytes()).decode("ascii")


def decode_base64_audio(data: Any, event_id: str | None = None) -> bytes:
    """The ``audio`` field of ``input_audio_buffer.append`` -> its bytes; raises RealtimeError on bad input."""
    if not isinstance(data, str):
        raise RealtimeError("input_audio_buffer.append needs `audio`: a base64 string in the session's input "
                            "format (PCM16 24 kHz mono unless set otherwise).", "invalid_value", param="audio",
                            event_id=event_id)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RealtimeError("`audio` is not valid base64.", "invalid_value", param="audio",
                            event_id=event_id) from None


def pcm16_samples(raw: bytes, event_id: str | None = None) -> np.ndarray:
    """PCM16 little-endian bytes -> float32 [-1, 1); raises RealtimeError on a torn sample."""
    if len(raw) % 2:
        raise RealtimeError("`audio` must hold whole 16-bit samples (an even number of bytes).", "invalid_value",
                            param="audio", event_id=event_id)
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def decode_pcm16(data: Any, event_id: str | None = None) -> np.ndarray:
    """base64 PCM16 little-endian -> float32 [-1, 1); raises RealtimeError on bad input."""
    return pcm16_samples(decode_base64_audio(data, event_id), event_id)


class AudioCodec:
    """One connection's audio in its negotiated formats (G.711 streams are made on first use)."""

    def __init__(self, input_format: str = "audio/pcm", output_format: str = "audio/pcm") -> None:
        self.input_format = input_format
        self.output_format = output_format
        self._decoder: G711Decoder | None = None
        self._encoder: G711Encoder | None = None

    @property
    def streams_output(self) -> bool:
        """True when every frame must be encoded, sent or not (a G.711 resampler must hear the silences)."""
        return self.output_format in G711_LAW

    def decode(self, raw: bytes, event_id: str | None = None) -> np.ndarray:
        """Appended bytes -> float32 PCM at 24 kHz (a G.711 resampler may hold its first samples back)."""
        law = G711_LAW.get(self.input_format)
        if law is None:
            return pcm16_samples(raw, event_id)
        if self._decoder is None:
            self._decoder = G711Decoder(law)  # type: ignore[arg-type]
        return self._decoder.decode(raw)

    def encode(self, pcm: np.ndarray) -> str:
        """One engine frame -> a base64 ``delta`` in the output format."""
        law = G711_LAW.get(self.output_format)
        if law is None:
            return encode_pcm16(pcm)
        if self._encoder is None:
            self._encoder = G711Encoder(law)  # type: ignore[arg-type]
        return base64.b64encode(self._encoder.encode(pcm)).decode("ascii")
