"""Shared test helpers: the tiny random checkpoint (generated once per machine, deterministic) and paths."""

from __future__ import annotations

import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
KIT = SHARED / "conformance"
SPEECH_WAV = SHARED / "audio" / "user_turn_en.wav"


def tiny_checkpoint(seed: int = 1234) -> Path:
    from bizra_voice.tiny import ensure_tiny

    return ensure_tiny(Path(tempfile.gettempdir()) / "bizra-voice-tests" / f"tiny-{seed}", seed)
