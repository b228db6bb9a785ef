"""Voice prompts: an allow-listed catalog of names, and their preparation for the prompt prefill.

A client names a voice; the name is looked up in a dict built from the files present, never joined onto
a path. ``.pt`` voices (PersonaPlex's format) are replayed from their saved input embeddings; WAV voices are
loudness-normalised to -24 LUFS and Mimi-encoded frame by frame, as the reference does.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bizra_voice import constants as C
from bizra_voice.engine.api import BadSessionRequest

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_SUFFIXES = (".pt", ".wav")
TARGET_LUFS = -24.0


@dataclass(frozen=True)
class VoiceEntry:
    name: str
    path: Path
    kind: str  # "preset" | "custom"


class VoiceCatalog:
    """Voices found in the checkpoint's voice folder (presets) and an optional custom folder."""

    def __init__(self, preset_dir: Path | None, custom_dir: Path | None = None) -> None:
        self._entries: dict[str, VoiceEntry] = {}
        self._by_file: dict[str, VoiceEntry] = {}
        for folder, kind in ((preset_dir, "preset"), (custom_dir, "custom")):
            if folder is None or not Path(folder).is_dir():
                continue
            for path in sorted(Path(folder).iterdir()):
                if path.suffix.lower() in _SUFFIXES and path.is_file() and _NAME.match(path.stem):
                    self._by_file.setdefault(path.stem + path.suffix.lower(), VoiceEntry(path.stem, path, kind))
                    # A .pt preset wins over a WAV of the same name; presets win over custom voices.
                    current = self._entries.get(path.stem)
                    if current is None or (current.kind == kind and path.suffix == ".pt"):
                        self._entries[path.stem] = VoiceEntry(path.stem, path, kind)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def listing(self) -> list[dict[str, str]]:
        return [{"name": e.name, "kind": e.kind} for e in sorted(self._entries.values(),
                                                                  key=lambda e: (e.kind != "preset", e.name))]

    def resolve(self, requested: str) -> VoiceEntry:
        """Accept ``NATF2``, ``NATF2.pt`` or ``NATF2.wav`` (as PersonaPlex clients send it); nothing path-like."""
        name = (requested or "").strip()
        exact = self._by_file.get(name)
        if exact is not None:  # "TINYF0.wav" picks the WAV even when a .pt of that name exists
            return exact
        for suffix in _SUFFIXES:
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        if not _NAME.match(name):
            raise BadSessionRequest(f"Voice name {requested[:80]!r} is not valid: use a name from /api/voices.")
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(sorted(self._entries)[:24]) or "none installed"
            raise BadSessionRequest(f"Unknown voice {name!r}; available: {known}.")
        return entry


@dataclass
class VoicePrompt:
    """What the prefill needs from a voice.

    ``codes`` [8, N] are the Mimi codes of the N voice frames. For ``.pt`` voices only the last frame is
    known as codes; the first N-1 positions come as ready input ``embeddings`` [N-1, dim] and
    ``tail_column`` [17] is the model input column of position N-1.
    """

    name: str
    frames: int
    codes: np.ndarray
    embeddings: Any | None = None  # torch.Tensor [N-1, dim]
    tail_column: np.ndarray | None = None


def load_pt_voice(path: Path, name: str, model_dim: int) -> VoicePrompt:
    import torch

    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
        emb, cache = blob["embeddings"], blob["cache"]
    except Exception as exc:  # torch raises many types for a bad pickle
        raise BadSessionRequest(f"Voice {name!r} is not a valid PersonaPlex .pt voice ({type(exc).__name__}).") from exc
    if emb.dim() != 4 or emb.shape[-1] != model_dim or cache.dim() != 3 or cache.shape[1] != 17:
        raise BadSessionRequest(f"Voice {name!r} was made for another model (embeddings {tuple(emb.shape)}, "
                                f"model dim {model_dim}).")
    frames = emb.shape[0] + 1
    width = cache.shape[2]
    tail = cache[0, :, (frames - 1) % width].to(torch.int64).numpy().copy()
    last_acoustic = cache[0, 2:9, frames % width].to(torch.int64).numpy()
    codes = np.zeros((8, frames), dtype=np.int64)
    codes[0, -1] = tail[1]
    codes[1:, -1] = last_acoustic
    return VoicePrompt(name=name, frames=frames, codes=codes, embeddings=emb.reshape(emb.shape[0], model_dim),
                       tail_column=tail)


def read_voice_wav(path: Path) -> np.ndarray:
    """Mono 24 kHz float32 at -24 LUFS, before padding (the reference's ``load_voice_prompt``)."""
    import pyloudnorm
    import sphn

    try:
        pcm, sample_rate = sphn.read(str(path))
    except Exception as exc:
        raise BadSessionRequest(f"Voice file {path.name} is not readable audio ({exc}).") from exc
    if sample_rate != C.SAMPLE_RATE:
        pcm = sphn.resample(pcm, src_sample_rate=sample_rate, dst_sample_rate=C.SAMPLE_RATE)
    mono = np.asarray(pcm[0], dtype=np.float32)
    if mono.size < C.FRAME_SIZE:
        raise BadSessionRequest(f"Voice file {path.name} is shorter than 80 ms.")
    meter = pyloudnorm.Meter(C.SAMPLE_RATE)
    loudness = meter.integrated_loudness(mono)
    if not np.isfinite(loudness):
        raise BadSessionRequest(f"Voice file {path.name} is silent.")
    return pyloudnorm.normalize.loudness(mono, loudness, TARGET_LUFS).astype(np.float32)


def encode_voice_pcm(mimi: Any, pcm: np.ndarray) -> np.ndarray:
    """Mimi codes [8, N] of 1920-sample frames (last one zero-padded), encoded in streaming mode."""
    import torch

    frames = -(-pcm.shape[0] // C.FRAME_SIZE)
    padded = np.zeros(frames * C.FRAME_SIZE, dtype=np.float32)
    padded[: pcm.shape[0]] = pcm
    device = next(mimi.parameters()).device
    codes = []
    with torch.no_grad(), mimi.streaming(1):
        for i in range(frames):
            chunk = torch.from_numpy(padded[i * C.FRAME_SIZE:(i + 1) * C.FRAME_SIZE]).to(device)
            codes.append(mimi.encode(chunk[None, None])[0, :, 0].cpu())
    return torch.stack(codes, dim=1).numpy().astype(np.int64)


class VoiceLibrary:
    """Catalog + a cache of prepared voice prompts (each voice is prepared once)."""

    def __init__(self, catalog: VoiceCatalog, voice_mimi: Any, model_dim: int) -> None:
        self.catalog = catalog
        self._mimi = voice_mimi
        self._dim = model_dim
        self._cache: dict[str, VoicePrompt] = {}
        self._lock = threading.Lock()

    def prepare(self, requested: str) -> VoicePrompt:
        entry = self.catalog.resolve(requested)
        with self._lock:
            cached = self._cache.get(entry.name)
            if cached is not None:
                return cached
            if entry.path.suffix == ".pt":
                prompt = load_pt_voice(entry.path, entry.name, self._dim)
            else:
                codes = encode_voice_pcm(self._mimi, read_voice_wav(entry.path))
                prompt = VoicePrompt(name=entry.name, frames=codes.shape[1], codes=codes)
            self._cache[entry.name] = prompt
            return prompt
