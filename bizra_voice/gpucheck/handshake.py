"""Handshake cost: preparing the default persona with a 10 s voice and prefilling it into a slot.

A client's handshake waits for (1) the voice's preparation (first use only: a WAV is read, normalised to
-24 LUFS and Mimi-encoded; a ``.pt`` preset is loaded) and the persona's tokenization, then (2) the prompt's
teacher-forced prefill into its slot (``BatchedEngine.start_slot``, one transformer pass over the whole
prompt plus one step). Both are measured through the product's ``LoadedModels.prepare`` and the engine, on an
idle engine; the real-time run reports the same prefill while other sessions are running.
"""

from __future__ import annotations

import contextlib
import importlib
import statistics
import time
from typing import Any

import torch

from bizra_voice.engine.api import EngineError, SamplingParams, SessionSpec

REPEATS = 3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_handshakes(loaded: Any, voices: dict[str, str], repeats: int = REPEATS) -> dict[str, Any]:
    """Per voice kind ('pt', 'wav'): preparation ms (first use and cached), prompt size, prefill ms."""
    from bizra_voice.engine.batched import BatchedEngine

    bundle = loaded.bundle
    results: dict[str, Any] = {}
    for module in ("sphn", "pyloudnorm"):  # the WAV reader's packages: their import is not the voice's cost
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    engine = BatchedEngine(bundle, 1)
    try:
        for kind, name in voices.items():
            spec = SessionSpec(voice=name)
            try:
                started = time.perf_counter()
                prompt = loaded.prepare(spec)
                first_ms = (time.perf_counter() - started) * 1000
            except (ImportError, EngineError, OSError) as exc:  # e.g. a WAV reader's package missing there
                results[kind] = {"voice": name, "skipped": f"{type(exc).__name__}: {exc}"}
                continue
            started = time.perf_counter()
            loaded.prepare(spec)
            cached_ms = (time.perf_counter() - started) * 1000
            prefills = []
            for _ in range(repeats + 1):  # the first one warms the kernels for this prompt length
                _sync(bundle.device)
                started = time.perf_counter()
                engine.start_slot(0, prompt, SamplingParams(seed=1))
                _sync(bundle.device)
                prefills.append((time.perf_counter() - started) * 1000)
            timed = prefills[1:]
            results[kind] = {
                "voice": name, "voice_frames": prompt.voice.frames if prompt.voice else 0,
                "text_tokens": len(prompt.tokens), "prompt_frames": prompt.length,
                "prepare_first_use_ms": round(first_ms, 2), "prepare_cached_ms": round(cached_ms, 3),
                "prefill_ms": round(statistics.median(timed), 2), "prefill_max_ms": round(max(timed), 2),
                "prefill_first_ms": round(prefills[0], 2),
                "handshake_ms": round(first_ms + statistics.median(timed), 2),
            }
    finally:
        engine.close()
    return results
