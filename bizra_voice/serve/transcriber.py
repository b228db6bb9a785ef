"""Transcriber: speech-to-text of one user turn (hybrid mode), a stateless Ray Serve shell around Whisper.

``transcribe(pcm, sample_rate)`` takes the turn's float32 mono PCM (the 24 kHz the server decodes),
resamples to Whisper's 16 kHz and returns ``{"text", "ms", "audio_s", "model"}``. Stateless, so any replica
serves any turn. GPU profile: ``openai/whisper-small`` (244 M params, ~0.5 GB in half precision) on a 0.1
GPU share; CPU dev profile: a tiny random Whisper generated locally (its text is gibberish).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
from ray import serve

from bizra_voice.config import TranscriberConfig
from bizra_voice.serve.cpu_share import yield_cpu_to_the_engine
from bizra_voice.serve.model_cache import pick_device

log = logging.getLogger("ray.serve")

WHISPER_RATE = 16_000
MAX_SECONDS = 30.0  # one Whisper window


@serve.deployment(name="Transcriber")
class Transcriber:
    def __init__(self, config: dict, model_dir: str | None = None) -> None:
        import torch
        from transformers import AutoFeatureExtractor, AutoTokenizer, WhisperForConditionalGeneration

        self.config = TranscriberConfig.model_validate(config)
        device = pick_device(self.config.device, self.config.gpu_memory_fraction)
        yield_cpu_to_the_engine(device, "Transcriber")  # CPU: one thread, lower priority than the engine
        if self.config.tiny_random:
            from bizra_voice.serve.tiny_whisper import make_tiny_whisper

            model_dir = str(make_tiny_whisper(model_dir or self.config.model))
        source = model_dir or self.config.model
        dtype = self.config.dtype
        if dtype == "auto":
            dtype = "float16" if device == "cuda" else "float32"
        self.dtype = getattr(torch, dtype)
        self.device = device
        self.model_name = source
        self.random_weights = self.config.tiny_random
        self.features = AutoFeatureExtractor.from_pretrained(source)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = WhisperForConditionalGeneration.from_pretrained(source, torch_dtype=self.dtype)
        self.model.to(device).eval()
        self._lock = threading.Lock()  # one generate at a time per replica (Ray may run calls concurrently)
        from bizra_voice.serve.metrics import latency_histogram

        self.latency_hist = latency_histogram("bizra_transcriber_ms", "Transcriber: one user turn -> text (ms).")
        log.info("Transcriber ready: %s on %s%s", source, device,
                 " (tiny RANDOM weights: transcripts are gibberish)" if self.random_weights else "")

    def _run(self, pcm: np.ndarray, sample_rate: int) -> str:
        import sphn
        import torch

        audio = np.asarray(pcm, np.float32).reshape(-1)
        if sample_rate != WHISPER_RATE:
            audio = np.asarray(sphn.resample(audio, sample_rate, WHISPER_RATE), np.float32).reshape(-1)
        audio = audio[: int(MAX_SECONDS * WHISPER_RATE)]
        feats = self.features(audio, sampling_rate=WHISPER_RATE, return_tensors="pt")
        inputs = feats.input_features.to(self.device, self.dtype)
        kwargs = {"max_new_tokens": self.config.max_new_tokens}
        if not self.random_weights:
            kwargs["task"] = "transcribe"
            if self.config.language:
                kwargs["language"] = self.config.language
        with self._lock, torch.inference_mode():
            ids = self.model.generate(inputs, **kwargs)
        return " ".join(self.tokenizer.decode(ids[0], skip_special_tokens=True).split())

    async def transcribe(self, pcm: np.ndarray, sample_rate: int = 24_000) -> dict:
        if not isinstance(sample_rate, int) or not 8_000 <= sample_rate <= 48_000:
            raise ValueError(f"sample_rate must be 8000..48000 Hz, got {sample_rate!r}")
        audio_s = float(np.asarray(pcm).size) / sample_rate
        start = time.perf_counter()
        text = await asyncio.to_thread(self._run, pcm, sample_rate)
        self.latency_hist.observe((time.perf_counter() - start) * 1000.0)
        return {"text": text, "ms": round((time.perf_counter() - start) * 1000.0, 1), "audio_s": round(audio_s, 3),
                "model": self.model_name, "random_weights": self.random_weights}

    async def status(self) -> dict:
        return {"healthy": True, "model": self.model_name, "device": self.device,
                "random_weights": self.random_weights}
