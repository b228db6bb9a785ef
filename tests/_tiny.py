"""Shared test helpers: the tiny random checkpoint (generated once per machine, deterministic) and paths."""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
KIT = SHARED / "conformance"
SPEECH_WAV = SHARED / "audio" / "user_turn_en.wav"


def tiny_checkpoint(seed: int = 1234) -> Path:
    """The tiny checkpoint of the current layout, made once under a file lock (``shared_tiny_checkpoint``)."""
    from bizra_voice.tiny import shared_tiny_checkpoint

    return shared_tiny_checkpoint(seed)
