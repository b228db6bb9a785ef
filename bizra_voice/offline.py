"""A whole conversation from a file: user WAV in, assistant WAV + text out (same engine as the server)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bizra_voice import constants as C
from bizra_voice.engine.api import SamplingParams, SessionSpec


@dataclass
class OfflineResult:
    pcm: np.ndarray  # float32 assistant audio, one frame per input frame
    text_tokens: list[int]
    pieces: list[dict[str, Any]]  # {"frame": t, "text": piece}
    prompt_positions: int
    seed: int

    @property
    def transcript(self) -> str:
        return "".join(p["text"] for p in self.pieces)


def read_user_wav(path: Path) -> np.ndarray:
    """Mono float32 at 24 kHz (first channel), as the server receives it."""
    import sphn

    pcm, sample_rate = sphn.read(str(path))
    if sample_rate != C.SAMPLE_RATE:
        pcm = sphn.resample(pcm, src_sample_rate=sample_rate, dst_sample_rate=C.SAMPLE_RATE)
    return np.asarray(pcm[0], dtype=np.float32)


def run_conversation(runtime_parts: tuple[Any, Any], spec: SessionSpec, user_pcm: np.ndarray) -> OfflineResult:
    """Drive a 1-slot engine frame by frame; ``runtime_parts`` = (BatchedEngine, prepared prompt)."""
    engine, prompt = runtime_parts
    seed = engine.start_slot(0, prompt, spec.sampling)
    frames = -(-user_pcm.size // C.FRAME_SIZE)
    padded = np.zeros(frames * C.FRAME_SIZE, dtype=np.float32)
    padded[: user_pcm.size] = user_pcm
    out_pcm, tokens, pieces = [], [], []
    active = np.ones(engine.slots, dtype=bool)
    active[1:] = False
    batch = np.zeros((engine.slots, C.FRAME_SIZE), dtype=np.float32)
    tokenizer = engine.bundle.tokenizer
    from bizra_voice.engine.batched import text_piece

    for t in range(frames):
        batch[0] = padded[t * C.FRAME_SIZE:(t + 1) * C.FRAME_SIZE]
        result = engine.tick(batch, active)
        if not result.produced[0]:
            out_pcm.append(np.zeros(C.FRAME_SIZE, dtype=np.float32))
            continue
        token = int(result.text[0])
        tokens.append(token)
        out_pcm.append(result.pcm[0])
        piece = text_piece(tokenizer, token)
        if piece is not None:
            pieces.append({"frame": t, "text": piece})
    return OfflineResult(np.concatenate(out_pcm) if out_pcm else np.zeros(0, np.float32), tokens, pieces,
                         prompt.length, seed)


def run_offline(input_wav: Path, output_wav: Path, output_text: Path | None, checkpoint: str, voice: str,
                text_prompt: str, greedy: bool, seed: int | None, device: str) -> OfflineResult:
    import sphn

    from bizra_voice.engine.batched import BatchedEngine
    from bizra_voice.engine.config import EngineConfig
    from bizra_voice.engine.runtime import EngineRuntime

    config = EngineConfig(checkpoint=checkpoint, device=device, slots=1)  # type: ignore[arg-type]
    sampling = SamplingParams(greedy=greedy, seed=seed)
    spec = SessionSpec(text_prompt=text_prompt, voice=voice, sampling=sampling)
    parts = EngineRuntime.load_parts(config)
    engine = BatchedEngine(parts.bundle, 1)
    try:
        prompt = parts.prepare(spec)
        result = run_conversation((engine, prompt), spec, read_user_wav(input_wav))
    finally:
        engine.close()
    sphn.write_wav(str(output_wav), result.pcm, C.SAMPLE_RATE)
    if output_text is not None:
        output_text.write_text(json.dumps({
            "transcript": result.transcript, "pieces": result.pieces, "text_tokens": result.text_tokens,
            "frames": len(result.text_tokens), "prompt_positions": result.prompt_positions, "seed": result.seed,
            "voice": prompt.voice.name if prompt.voice else None,
        }, ensure_ascii=False, indent=1))
    return result
