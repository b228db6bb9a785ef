"""The models the check runs: PersonaPlex (dep_q 8 slice) and Mimi at full or tiny size with random weights.

Speed and memory do not depend on the weights' values, so nothing is downloaded and no 16 GB file is
written: the LM is built directly on the device in its serving dtype (bf16 on CUDA) and moshi's random init
fills it; Mimi gets moshi's stock config (full) or the tiny one, with random codebooks. The tokenizer is a
small SentencePiece model trained here with PersonaPlex's special ids, and the voices are a synthetic 10 s
speech-like clip as a WAV (the reference's WAV path: loudness, Mimi encoding) and as a PersonaPlex ``.pt``
(the presets' embedding replay). Everything else is the product's: ``ModelBundle``, ``VoiceLibrary``,
``EngineConfig``, ``LoadedModels``.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bizra_voice import constants as C
from bizra_voice.gpucheck import int8 as int8_backends
from bizra_voice.gpucheck.speech import speech_like, write_wav

FULL = "full"
TINY = "tiny"
VOICE_WAV = "SYNTH10W"  # the synthetic voice as a WAV (prepared on first use: -24 LUFS, Mimi encoding)
VOICE_PT = "SYNTH10P"  # the same voice as a PersonaPlex .pt (embeddings replayed in one prefill)
VOICE_SECONDS = 10.0
QUICK_CPU_VOICE_SECONDS = 3.0  # CI on a small CPU: the tiny Mimi encodes a 10 s voice in ~10 s there


@dataclass
class CheckModels:
    """The loaded models plus what the report says about them."""

    loaded: Any  # bizra_voice.engine.runtime.LoadedModels
    size: str
    lm_params: int
    weights_bytes: int  # the LM's parameters and buffers as stored (int8 where quantized)
    codec_bytes: int  # both Mimis
    dtype: str
    int8: str | None = None
    int8_note: str = ""
    build_s: float = 0.0
    load_peak_bytes: int | None = None  # CUDA allocator peak while building (bf16 first, then int8)
    voices: dict[str, str] = field(default_factory=dict)
    voice_seconds: float = VOICE_SECONDS
    tokenizer_pieces: int = 0

    @property
    def bundle(self) -> Any:
        return self.loaded.bundle

    def describe(self) -> dict[str, Any]:
        return {"size": self.size, "lm_params": self.lm_params, "weights_bytes": self.weights_bytes,
                "codec_bytes": self.codec_bytes, "dtype": self.dtype, "int8": self.int8, "int8_note": self.int8_note,
                "build_s": round(self.build_s, 2), "load_peak_bytes": self.load_peak_bytes, "voices": self.voices,
                "voice_seconds": self.voice_seconds,
                "tokenizer_pieces": self.tokenizer_pieces, "random_weights": True,
                "lm_kwargs": {k: v for k, v in self.bundle.files.lm_kwargs.items() if k != "delays"}}


def lm_kwargs(size: str) -> dict[str, Any]:
    """moshi ``LMModel`` kwargs at the dep_q 8 slice the engine serves."""
    from bizra_voice.engine.checkpoint import PERSONAPLEX_LM_KWARGS
    from bizra_voice.tiny import TINY_LM_KWARGS

    kwargs = dict(PERSONAPLEX_LM_KWARGS if size == FULL else TINY_LM_KWARGS)
    kwargs.pop("depformer_context", None)
    kwargs.pop("depformer_causal", None)
    kwargs["dep_q"] = 8
    return kwargs


def tensor_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers of ``modules`` as stored (inner tensors of quantized subclasses),
    each storage counted once."""
    seen: set[int] = set()
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        flatten = getattr(t, "__tensor_flatten__", None)
        if flatten is not None:  # a quantized tensor subclass: count what it stores
            names, _ctx = flatten()
            for name in names:
                add(getattr(t, name))
            return
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()

    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            data = t.data if isinstance(t, torch.nn.Parameter) else t
            add(data)
    return total


def _random_codebooks(mimi: Any) -> None:
    """A Mimi built without a file has empty codebooks; give them values so the quantizer behaves normally."""
    with torch.no_grad():
        for name, buf in mimi.named_buffers():
            if name.endswith("embedding_sum"):
                buf.normal_()
            elif name.endswith("cluster_usage"):
                buf.fill_(1.0)
            elif name.endswith("_initialized"):
                buf.fill_(1)


def build_mimi(size: str, device: torch.device) -> Any:
    from moshi.models import loaders

    from bizra_voice.tiny import TINY_MIMI_CONFIG

    mimi = loaders.get_mimi(None, mimi_config=None if size == FULL else TINY_MIMI_CONFIG, device=device,
                            num_codebooks=8)
    _random_codebooks(mimi)
    return mimi


def build_lm(size: str, device: torch.device, dtype: torch.dtype) -> Any:
    """The LM at ``size``, allocated and randomly initialised on ``device`` (no host copy of 15 GB)."""
    from moshi.models.lm import LMModel

    torch.manual_seed(0)
    return LMModel(device=device, dtype=dtype, **lm_kwargs(size)).eval()


def write_pt_voice(path: Path, lm: Any, codes: np.ndarray) -> Path:
    """PersonaPlex's ``.pt`` voice format from Mimi codes [8, N] (``voices.pt_voice_state``, on the LM's device)."""
    from bizra_voice.voices import pt_voice_state

    torch.save(pt_voice_state(lm, codes), str(path))
    return path


def _cuda_peak_reset(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def build_check_models(size: str, device: torch.device, workdir: Path, *, int8: str | None = None,
                       dtype: torch.dtype | None = None, engine_overrides: dict[str, Any] | None = None,
                       voice_seconds: float = VOICE_SECONDS) -> CheckModels:
    """Build everything the check needs in ``workdir`` (tokenizer and voices are small files there)."""
    from bizra_voice.engine.checkpoint import CheckpointFiles
    from bizra_voice.engine.config import EngineConfig
    from bizra_voice.engine.loading import ModelBundle, load_tokenizer, pick_dtype
    from bizra_voice.engine.runtime import LoadedModels
    from bizra_voice.tiny import TINY_LM_KWARGS, _write_tokenizer
    from bizra_voice.voices import VoiceCatalog, VoiceLibrary, encode_voice_pcm

    started = time.perf_counter()
    dtype = dtype or pick_dtype("auto", device)
    before = _cuda_peak_reset(device)
    lm = build_lm(size, device, dtype)
    lm_params = sum(p.numel() for p in lm.parameters())
    note = ""
    if int8 is not None:
        note = int8_backends.quantize(lm, int8, device)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    load_peak = None if before is None else torch.cuda.max_memory_allocated(device) - before
    weights = tensor_bytes(lm)
    mimi = build_mimi(size, device)
    voice_mimi = build_mimi(size, device)

    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer_path = workdir / C.TOKENIZER_FILENAME
    _write_tokenizer(tokenizer_path, int(TINY_LM_KWARGS["text_card"]))  # ids < 384 suit both sizes
    tokenizer = load_tokenizer(tokenizer_path)
    kwargs = lm_kwargs(size)
    files = CheckpointFiles(lm=Path(os.devnull), mimi=Path(os.devnull), tokenizer=tokenizer_path,
                            voices_dir=workdir / "voices", lm_kwargs=kwargs, mimi_config=None, mimi_num_codebooks=8,
                            source=f"random {size}-size PersonaPlex (gpu-check)")
    bundle = ModelBundle(lm=lm, mimi=mimi, voice_mimi=voice_mimi, tokenizer=tokenizer, files=files, device=device,
                         dtype=dtype)

    voices = workdir / "voices"
    voices.mkdir(exist_ok=True)
    pcm = speech_like(voice_seconds, seed=10, pitch=115.0)
    write_wav(voices / f"{VOICE_WAV}.wav", pcm)
    write_pt_voice(voices / f"{VOICE_PT}.pt", lm, encode_voice_pcm(voice_mimi, pcm))

    settings: dict[str, Any] = {"checkpoint": str(workdir), "device": device.type,
                                "dtype": str(dtype).replace("torch.", ""), "default_voice": VOICE_PT,
                                "cuda_graphs": device.type == "cuda"}
    settings.update(engine_overrides or {})
    settings["quantize_int8"] = False  # done above, with the chosen backend; the config must not redo it
    config = EngineConfig(**settings)
    library = VoiceLibrary(VoiceCatalog(voices), voice_mimi, lm.dim)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return CheckModels(loaded=LoadedModels(bundle, library, config), size=size, lm_params=lm_params,
                       weights_bytes=weights, codec_bytes=tensor_bytes(mimi, voice_mimi),
                       dtype=str(dtype).replace("torch.", ""), int8=int8, int8_note=note,
                       build_s=time.perf_counter() - started, load_peak_bytes=load_peak,
                       voices={"wav": VOICE_WAV, "pt": VOICE_PT}, voice_seconds=voice_seconds,
                       tokenizer_pieces=tokenizer.get_piece_size())


def release(models: CheckModels | None) -> None:
    """Drop the models and give their device memory back (the next build must not see them)."""
    if models is None:
        return
    bundle = models.loaded.bundle
    for module in (bundle.lm, bundle.mimi, bundle.voice_mimi):
        module._stop_streaming()
    models.loaded = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
