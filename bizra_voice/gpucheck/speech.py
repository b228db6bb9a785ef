"""Speech-like test audio, synthesised: the check must not depend on a recording being present.

Speech for the model's codec is voiced syllables (a glottal pulse train through moving formants), short
noisy consonants, word gaps and longer pauses at about a talker's rhythm. The engine's cost does not depend
on what is said, but the codec and the voice-prompt path (loudness normalisation, Mimi encoding) should see
audio shaped like speech rather than white noise or silence.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from bizra_voice import constants as C


def _syllable(rng: np.random.Generator, seconds: float, pitch: float, rate: int) -> np.ndarray:
    n = max(1, int(seconds * rate))
    t = np.arange(n) / rate
    f0 = pitch * (1 + 0.12 * np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    formants = ((rng.uniform(300, 800), 90.0), (rng.uniform(900, 2200), 120.0), (2600.0, 200.0))
    voiced = np.zeros(n)
    for k in range(1, int(4000 / pitch)):
        weight = sum(np.exp(-((k * pitch - f) / w) ** 2 / 2) for f, w in formants) + 0.06 / k
        voiced += weight * np.sin(k * phase)
    envelope = np.sin(np.pi * np.linspace(0, 1, n)) ** 0.6
    onset = int(min(n // 4, 0.03 * rate))
    consonant = np.zeros(n)
    if onset and rng.random() < 0.6:  # a fricative or plosive onset
        consonant[:onset] = rng.standard_normal(onset) * np.linspace(1, 0, onset) * 0.4
    out = voiced / (np.abs(voiced).max() + 1e-9) * envelope + consonant
    return out


def speech_like(seconds: float, seed: int = 0, pitch: float = 120.0, rate: int = C.SAMPLE_RATE) -> np.ndarray:
    """``seconds`` of deterministic speech-like float32 PCM (mono, ``rate`` Hz, peak about -10 dBFS)."""
    rng = np.random.default_rng(seed)
    total = int(seconds * rate)
    parts: list[np.ndarray] = []
    length = 0
    while length < total:
        for _ in range(int(rng.integers(2, 9))):  # a phrase: a few words of 1-3 syllables
            for _ in range(int(rng.integers(1, 4))):
                syl = _syllable(rng, rng.uniform(0.09, 0.26), pitch * rng.uniform(0.85, 1.2), rate)
                parts.append(syl * rng.uniform(0.5, 1.0))
            parts.append(np.zeros(int(rng.uniform(0.03, 0.12) * rate)))  # word gap
        parts.append(np.zeros(int(rng.uniform(0.3, 1.2) * rate)))  # pause between phrases
        length = sum(p.size for p in parts)
    pcm = np.concatenate(parts)[:total]
    pcm += 0.002 * rng.standard_normal(total)  # room noise: a real microphone is never digital silence
    return (0.3 * pcm / (np.abs(pcm).max() + 1e-9)).astype(np.float32)


def write_wav(path: Path, pcm: np.ndarray, rate: int = C.SAMPLE_RATE) -> Path:
    """16-bit mono WAV with the standard library (no audio package needed to write the test voice)."""
    samples = np.clip(np.asarray(pcm, dtype=np.float32), -1.0, 1.0)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((samples * 32767).astype("<i2").tobytes())
    return path


def frames_of(pcm: np.ndarray, count: int, offset_frames: int = 0) -> np.ndarray:
    """``count`` consecutive 80 ms frames [count, FRAME_SIZE] of ``pcm``, looping, from ``offset_frames``."""
    available = pcm.size // C.FRAME_SIZE
    clip = pcm[: available * C.FRAME_SIZE].reshape(available, C.FRAME_SIZE)
    index = (np.arange(count) + offset_frames) % available
    return clip[index]
