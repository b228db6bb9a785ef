"""``bizra-voice make-tiny DIR``: a tiny random PersonaPlex checkpoint in the real file layout.

It lets anyone run the whole server (CPU dev profile), the tests and the benchmarks without a GPU or the
gated weights. The weights are random, so the audio it produces is noise; the files, their names, key
layout (dep_q=16, stacked depformer attention, bf16 LM) and loading path are the real ones. Deterministic
for a given seed.

``voices/`` offers all 18 preset names PersonaPlex's clients know (NATF0-3, NATM0-3, VARF0-4, VARM0-4), so
any client's default voice works in development (LiveKit's plugin defaults to NATF2, NVIDIA's web client
offers all 18). Each is a tiny synthetic voice; NATF0 is a WAV, the rest PersonaPlex's ``.pt`` format, so both
voice paths stay exercised. ``.complete`` records :data:`TINY_LAYOUT`; a cache made by an older layout is
regenerated rather than silently reused.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from bizra_voice import constants as C

TINY_LAYOUT = 2  # 1: NATM1.pt + NATF0.wav only; 2: all 18 presets
_MARKER = ".complete"
WAV_VOICES = frozenset({"NATF0"})
# Pitch (Hz) of each tiny voice: female 175-250, male 95-140. NATM1 and NATF0 keep layout 1's signals.
_PITCH: dict[str, float] = {
    "NATF0": 210.0, "NATF1": 190.0, "NATF2": 230.0, "NATF3": 175.0,
    "NATM0": 125.0, "NATM1": 110.0, "NATM2": 98.0, "NATM3": 140.0,
    "VARF0": 200.0, "VARF1": 220.0, "VARF2": 185.0, "VARF3": 245.0, "VARF4": 180.0,
    "VARM0": 105.0, "VARM1": 130.0, "VARM2": 95.0, "VARM3": 118.0, "VARM4": 135.0,
}

TINY_LM_KWARGS: dict[str, Any] = {
    "dim": 32, "text_card": 384, "existing_text_padding_id": 3, "n_q": 16, "dep_q": 16, "card": 2048,
    "num_heads": 2, "num_layers": 2, "hidden_scale": 4.125, "causal": True, "layer_scale": None,
    "context": 3000, "max_period": 10000, "gating": "silu", "norm": "rms_norm_f32",
    "positional_embedding": "rope", "depformer_dim": 16, "depformer_dim_feedforward": 66,
    "depformer_num_heads": 2, "depformer_num_layers": 1, "depformer_causal": True,
    "depformer_layer_scale": None, "depformer_multi_linear": True, "depformer_context": 8,
    "depformer_max_period": 10000, "depformer_gating": "silu", "depformer_pos_emb": "none",
    "depformer_weights_per_step": True, "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
}

TINY_MIMI_CONFIG: dict[str, Any] = {
    "sample_rate": 24000, "channels": 1, "frame_rate": 12.5,
    "seanet": {"channels": 1, "dimension": 32, "causal": True, "n_filters": 4, "n_residual_layers": 1,
               "activation": "ELU", "compress": 2, "dilation_base": 2, "disable_norm_outer_blocks": 0,
               "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 3, "norm": "none",
               "pad_mode": "constant", "ratios": [8, 6, 5, 4], "true_skip": True},
    "quantizer": {"dimension": 16, "n_q": 8, "bins": 2048, "input_dimension": 32, "output_dimension": 32},
    "transformer": {"d_model": 32, "num_heads": 2, "num_layers": 1, "causal": True, "layer_scale": 0.01,
                    "context": 250, "conv_layout": True, "max_period": 10000, "gating": "none",
                    "norm": "layer_norm", "positional_embedding": "rope", "dim_feedforward": 64,
                    "input_dimension": 32, "output_dimensions": [32]},
}

_CORPUS = [
    C.DEFAULT_PERSONA,
    "Hello, how can I help you today? I am listening. Tell me more about what you need.",
    "The weather is calm and clear. Thank you for calling. Let me think about that for a moment.",
    "You are a helpful assistant. Please answer briefly and precisely. What would you like to know?",
    "Good morning. Good evening. Yes. No. Maybe. Of course. I understand. Could you repeat that please?",
    "Numbers one two three four five six seven eight nine ten. The answer is simple and clear.",
    "Privacy matters. Local compute keeps your data at home. Transparency builds trust over time.",
]


def stacked_state_dict(model: Any) -> dict[str, Any]:
    """The LM state dict in PersonaPlex's layout: per-step attention projections stacked step-major."""
    import torch

    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    groups: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        m = re.match(r"^(.*self_attn)\.(in_projs|out_projs)\.(\d+)\.weight$", key)
        if m:
            groups.setdefault((m.group(1), m.group(2)), {})[int(m.group(3))] = value
        else:
            out[key] = value
    for (prefix, kind), parts in groups.items():
        stacked = torch.cat([parts[i] for i in sorted(parts)], dim=0)
        out[f"{prefix}.in_proj_weight" if kind == "in_projs" else f"{prefix}.out_proj.weight"] = stacked
    return out


def _write_tokenizer(path: Path, vocab_size: int) -> None:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(  # type: ignore[attr-defined]
        sentence_iterator=iter(_CORPUS * 8), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, pad_id=3, unk_id=0, bos_id=1, eos_id=2, num_threads=1, seed_sentencepiece_size=100000,
        user_defined_symbols=[C.SYSTEM_TAG], hard_vocab_limit=False, minloglevel=2)
    path.write_bytes(model.getvalue())


def _synth_voice(seconds: float, pitch: float, seed: int) -> np.ndarray:
    """A deterministic voice-like signal (glottal pulses through moving formants), float32 24 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * C.SAMPLE_RATE)) / C.SAMPLE_RATE
    f0 = pitch * (1 + 0.08 * np.sin(2 * np.pi * 3.1 * t))
    phase = 2 * np.pi * np.cumsum(f0) / C.SAMPLE_RATE
    source = sum(np.sin(k * phase) / k for k in range(1, 18))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2.3 * t + rng.uniform(0, 6)) ** 2
    signal = source * envelope + 0.01 * rng.standard_normal(t.size)
    return (0.2 * signal / np.max(np.abs(signal))).astype(np.float32)


def _write_wav(path: Path, pcm: np.ndarray) -> None:
    import sphn

    sphn.write_wav(str(path), pcm, C.SAMPLE_RATE)


def _write_pt_voice(path: Path, bundle: Any, pcm: np.ndarray) -> None:
    """PersonaPlex's .pt voice of ``pcm`` (Mimi-encoded, then ``voices.pt_voice_state``)."""
    import torch

    from bizra_voice.voices import encode_voice_pcm, pt_voice_state

    torch.save(pt_voice_state(bundle.lm, encode_voice_pcm(bundle.voice_mimi, pcm)), str(path))


def make_tiny(folder: Path | str, seed: int = 1234) -> Path:
    """Write the tiny checkpoint into ``folder`` (created); returns the folder."""
    import torch
    from moshi.models.lm import LMModel
    from safetensors.torch import save_file

    from bizra_voice.engine.checkpoint import resolve_local
    from bizra_voice.engine.loading import load_bundle

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / _MARKER).unlink(missing_ok=True)  # unfinished until the end writes it again
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in TINY_LM_KWARGS.items() if k not in ("depformer_causal", "depformer_context")}
    lm = LMModel(device="cpu", dtype=torch.float32, **kwargs)
    for name, param in lm.named_parameters():
        with torch.no_grad():
            if "emb" in name and param.dim() == 2:
                param.normal_(0, 1)
            elif param.dim() == 2:
                param.normal_(0, param.shape[1] ** -0.5)
            elif "alpha" in name:
                param.copy_(1 + 0.1 * torch.randn_like(param))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in stacked_state_dict(lm).items()},
              str(folder / C.LM_FILENAME))

    from moshi.models import loaders

    mimi = loaders.get_mimi(None, mimi_config=TINY_MIMI_CONFIG, device="cpu", num_codebooks=8)
    with torch.no_grad():
        for name, buf in mimi.named_buffers():
            if name.endswith("embedding_sum"):
                buf.copy_(torch.randn_like(buf))
            elif name.endswith("cluster_usage"):
                buf.fill_(1.0)
            elif name.endswith("_initialized"):
                buf.fill_(1)
    save_file({k: v.contiguous() for k, v in mimi.state_dict().items()}, str(folder / C.MIMI_FILENAME))
    _write_tokenizer(folder / C.TOKENIZER_FILENAME, TINY_LM_KWARGS["text_card"])
    (folder / "config.json").write_text(json.dumps({
        "lm_kwargs": TINY_LM_KWARGS, "mimi_config": TINY_MIMI_CONFIG, "mimi_num_codebooks": 8,
        "note": "tiny random weights made by `bizra-voice make-tiny`: its audio is noise",
    }, indent=1))

    bundle = load_bundle(resolve_local(folder), torch.device("cpu"), torch.float32)
    _write_voices(folder / "voices", bundle, seed)
    (folder / _MARKER).write_text(json.dumps({"layout": TINY_LAYOUT, "seed": seed}) + "\n")
    return folder


def voice_signal(name: str, seed: int) -> np.ndarray:
    """The synthetic source signal of one tiny preset voice (deterministic per name and seed)."""
    offset = {"NATM1": 0, "NATF0": 1}.get(name, 2 + C.PRESET_VOICES.index(name))
    return _synth_voice(2.4, _PITCH[name], seed + offset)


def _write_voices(voices: Path, bundle: Any, seed: int) -> None:
    voices.mkdir(exist_ok=True)
    for name in C.PRESET_VOICES:  # an older layout's file of the other format would make a name ambiguous
        for suffix in (".pt", ".wav"):
            (voices / f"{name}{suffix}").unlink(missing_ok=True)
    for name in C.PRESET_VOICES:
        pcm = voice_signal(name, seed)
        if name in WAV_VOICES:
            _write_wav(voices / f"{name}.wav", pcm)
        else:
            _write_pt_voice(voices / f"{name}.pt", bundle, pcm)


def is_complete(folder: Path | str, seed: int) -> bool:
    """Whether ``folder`` holds a finished tiny checkpoint of this layout and seed."""
    try:
        marker = json.loads((Path(folder) / _MARKER).read_text())
    except (OSError, ValueError):
        return False  # missing, or layout 1's plain "ok"
    return isinstance(marker, dict) and marker.get("layout") == TINY_LAYOUT and marker.get("seed") == seed


def ensure_tiny(folder: Path | str, seed: int = 1234) -> Path:
    """Generate once and reuse (the CPU dev profile calls this at start); an older layout is regenerated.
    Not safe against a concurrent call for the same folder: wrap it in
    ``bizra_voice.build_once.ensure_under_lock`` where processes may race."""
    folder = Path(folder)
    if is_complete(folder, seed):
        return folder
    return make_tiny(folder, seed)


def shared_tiny_checkpoint(seed: int = 1234) -> Path:
    """The machine-wide tiny checkpoint of this layout (tests, benchmarks, gpu-check's tiny run), made once
    under a file lock so processes running in parallel never write it at once."""
    import tempfile

    from bizra_voice.build_once import ensure_under_lock

    folder = Path(tempfile.gettempdir()) / "bizra-voice-tests" / f"tiny-v{TINY_LAYOUT}-{seed}"
    return ensure_under_lock(folder, lambda path: ensure_tiny(path, seed))
