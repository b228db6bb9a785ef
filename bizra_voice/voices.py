"""Voice prompts: an allow-listed catalog of names, and their preparation for the prompt prefill.

A client names a voice; the name is looked up in a dict built from the files present, never joined onto
a path. ``.pt`` voices (PersonaPlex's format) are replayed from their saved input embeddings; WAV voices are
loudness-normalised to -24 LUFS and Mimi-encoded frame by frame, as the reference does.

Uploaded voices (``voice_upload.py``) live in a folder of their own that is read again on every listing and
lookup, so a replica sees a voice another replica of the node added or removed a moment ago.
"""

from __future__ import annotations

import os
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
    uploaded: bool = False  # in the uploads folder: removable through DELETE /api/voices/<name>
    stamp: tuple[int, int, int] | None = None  # uploads: (inode, size, mtime_ns) as scanned; None: fixed


def valid_voice_name(name: str) -> bool:
    """The allow-list every voice name passes: letters, digits, ``_`` and ``-``, 1-64, no leading symbol."""
    return bool(_NAME.match(name))


class VoiceCatalog:
    """Voices found in the checkpoint's voice folder (presets), an optional custom folder, and the uploads
    folder once one is attached (``attach_uploads``)."""

    def __init__(self, preset_dir: Path | None, custom_dir: Path | None = None) -> None:
        self._entries: dict[str, VoiceEntry] = {}
        self._by_file: dict[str, VoiceEntry] = {}
        self._uploads: Path | None = None
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

    def attach_uploads(self, folder: Path) -> None:
        """Also offer the ``.pt`` voices of ``folder`` (read on each use; never shadowing a fixed voice)."""
        self._uploads = Path(folder)

    @property
    def uploads_dir(self) -> Path | None:
        return self._uploads

    def uploaded(self) -> dict[str, VoiceEntry]:
        """The uploads folder's voices as they are on disk now (another replica may have changed them)."""
        found: dict[str, VoiceEntry] = {}
        if self._uploads is None:
            return found
        try:
            with os.scandir(self._uploads) as items:
                for item in items:
                    stem, dot, suffix = item.name.rpartition(".")
                    if not dot or suffix != "pt" or not _NAME.match(stem) or stem in self._entries:
                        continue
                    try:
                        st = item.stat(follow_symlinks=False)
                    except OSError:  # removed while we looked
                        continue
                    if item.is_file(follow_symlinks=False):
                        found[stem] = VoiceEntry(stem, Path(item.path), "custom", True,
                                                 (st.st_ino, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            pass
        return found

    def fixed_names(self) -> set[str]:
        """Presets and the operator's custom voices (never replaced or removed through the API)."""
        return set(self._entries)

    def is_preset(self, name: str) -> bool:
        entry = self._entries.get(name)
        return entry is not None and entry.kind == "preset"

    def __contains__(self, name: str) -> bool:
        return name in self._entries or (self._uploads is not None and name in self.uploaded())

    def __len__(self) -> int:
        return len(self._entries) + len(self.uploaded())

    def listing(self) -> list[dict[str, str]]:
        entries = [*self._entries.values(), *self.uploaded().values()]
        return [{"name": e.name, "kind": e.kind} for e in sorted(entries, key=lambda e: (e.kind != "preset", e.name))]

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
        if entry is None and self._uploads is not None:
            entry = self.uploaded().get(name)
        if entry is None:
            names = [*self._entries, *(self.uploaded() if self._uploads is not None else ())]
            known = ", ".join(sorted(names)[:24]) or "none installed"
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
    loudness = integrated_loudness(mono)
    if not np.isfinite(loudness):
        raise BadSessionRequest(f"Voice file {path.name} is silent.")
    return normalise_loudness(mono, loudness)


def integrated_loudness(mono: np.ndarray) -> float:
    """ITU-R BS.1770 integrated loudness (LUFS) of 24 kHz mono; -inf for silence."""
    import pyloudnorm

    return float(pyloudnorm.Meter(C.SAMPLE_RATE).integrated_loudness(mono))


def normalise_loudness(mono: np.ndarray, loudness: float) -> np.ndarray:
    """``mono`` (measured at ``loudness`` LUFS) brought to :data:`TARGET_LUFS`, as the reference does."""
    import pyloudnorm

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


def pt_voice_state(lm: Any, codes: np.ndarray) -> dict[str, Any]:
    """PersonaPlex's ``.pt`` voice from Mimi codes [8, N]: the summed input embeddings of positions 0..N-2
    (the LM's own tables, on its device; summed in the engine's order) and the delayed-token ring.

    Only the embedding tables are read (no streaming state), so this may run beside the tick thread."""
    import torch

    from bizra_voice.prompt import build_timeline, delayed_columns

    frames = codes.shape[1]
    if frames < 2:
        raise ValueError("a .pt voice needs at least two frames")
    timeline = build_timeline(codes, [])
    cols = delayed_columns(timeline.text, timeline.agent, timeline.user, 0, None, None, lm.text_card, lm.card)
    device = next(lm.parameters()).device
    with torch.no_grad():
        seq = torch.from_numpy(cols[:, : frames - 1]).to(device)
        emb = None
        for cb in range(lm.num_audio_codebooks):
            part = lm.emb[cb](seq[cb + lm.audio_offset])
            emb = part if emb is None else emb + part
        text = lm.text_emb(seq[0])
        emb = text if emb is None else emb + text
    cache = torch.full((1, 17, 4), -2, dtype=torch.long)
    cache[0, :, (frames - 1) % 4] = torch.from_numpy(cols[:, frames - 1])
    cache[0, 2:9, frames % 4] = torch.from_numpy(codes[1:, frames - 1])
    return {"embeddings": emb.reshape(frames - 1, 1, 1, -1).float().cpu(), "cache": cache}


class VoiceLibrary:
    """Catalog + a cache of prepared voice prompts (each voice is prepared once; an uploaded voice again
    when its file changed). The voice Mimi has its own lock, so encoding a voice never holds up a session
    whose voice is already prepared."""

    def __init__(self, catalog: VoiceCatalog, voice_mimi: Any, model_dim: int) -> None:
        self.catalog = catalog
        self._mimi = voice_mimi
        self._dim = model_dim
        self._cache: dict[str, tuple[VoiceEntry, VoicePrompt]] = {}
        self._lock = threading.Lock()  # the cache
        self._mimi_lock = threading.Lock()  # the voice Mimi's streaming state

    def prepare(self, requested: str) -> VoicePrompt:
        entry = self.catalog.resolve(requested)
        with self._lock:
            cached = self._cache.get(entry.name)
        if cached is not None and cached[0] == entry:
            return cached[1]
        if entry.path.suffix == ".pt":
            prompt = load_pt_voice(entry.path, entry.name, self._dim)
        else:
            codes = self.encode(read_voice_wav(entry.path))
            prompt = VoicePrompt(name=entry.name, frames=codes.shape[1], codes=codes)
        with self._lock:
            self._cache[entry.name] = (entry, prompt)
        return prompt

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        """Mimi codes [8, N] of 24 kHz mono PCM with the voice Mimi (one voice at a time)."""
        with self._mimi_lock:
            return encode_voice_pcm(self._mimi, pcm)

    def forget(self, name: str) -> None:
        """Drop a prepared voice (its file was removed)."""
        with self._lock:
            self._cache.pop(name, None)
