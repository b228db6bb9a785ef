"""``--memory-gb N``: the laptop profile (``serve_config.laptop.yaml``) on an N GiB card, next to its Qwen
and Whisper.

The plan's machine is an RTX 4090 Laptop GPU (16 GiB) under WSL2. On a bigger card the check reproduces its
memory: the CUDA allocator is capped (``torch.cuda.set_per_process_memory_fraction``) at N GiB minus one
CUDA context per GPU process of the profile, the Qwen (and, where the profile puts it on the GPU, Whisper)
share is held as a reserve of the bytes they were measured (or computed) to take, and PersonaPlex is loaded
with the profile's engine settings (int8, offload, slots) and served under that cap. An out-of-memory is a
finding ("does not fit"), never a crash. The time is the big card's, not a laptop's; the fit is the laptop's.
On CPU (CI) the same steps run with computed bytes instead of an allocator.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import torch

from bizra_voice.engine.capacity import MemoryFigures, memory_bound
from bizra_voice.gpucheck import int8 as int8_backends

GIB = 2**30
PROFILE_FILE = "serve_config.laptop.yaml"
# Kept free beyond the measured needs (fragmentation, prefill activations), as the engine's own sizing does.
CUDA_RESERVE_BYTES = 1 << 30

# Architecture of the profile's companion models (transformers configs; random weights, sizes are exact).
QWEN_DIMS = {
    "full": {"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
             "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
             "tie_word_embeddings": True},  # Qwen/Qwen2.5-1.5B-Instruct
    "tiny": {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
             "tie_word_embeddings": True},
}
WHISPER_DIMS = {  # openai/whisper-small
    "vocab_size": 51865, "num_mel_bins": 80, "d_model": 768, "encoder_layers": 12, "decoder_layers": 12,
    "encoder_attention_heads": 12, "decoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072,
}
# Engine settings that describe the checkpoint or the machine, not the profile's serving behaviour.
_NOT_ENGINE_SETTINGS = {"checkpoint", "revision", "hf_token_env", "cache_dir", "device", "dtype", "default_voice",
                        "custom_voices_dir", "quantize_int8", "memory_fraction"}


def find_profile(explicit: Path | None = None) -> Path:
    """The laptop profile: ``explicit``, else the working directory's, else the source tree's."""
    import bizra_voice

    candidates = [explicit] if explicit else [Path.cwd() / PROFILE_FILE,
                                              Path(bizra_voice.__file__).resolve().parents[1] / PROFILE_FILE]
    for path in candidates:
        if path is not None and path.is_file():
            return path
    raise FileNotFoundError(f"{PROFILE_FILE} not found (looked in {', '.join(str(c) for c in candidates)}); "
                            "run from the repository root or pass --profile.")


def load_profile(path: Path) -> Any:
    """The profile's validated ``AppConfig`` (its first application's ``args``)."""
    import yaml

    from bizra_voice.config import AppConfig

    data = yaml.safe_load(path.read_text())
    return AppConfig.model_validate(data["applications"][0]["args"])


def engine_settings(app: Any, device: torch.device) -> tuple[dict[str, Any], list[str]]:
    """The profile's engine settings to run with (and notes on what could not apply on this device)."""
    settings = {k: v for k, v in app.engine.model_dump().items() if k not in _NOT_ENGINE_SETTINGS}
    notes = []
    if device.type != "cuda":
        if settings.get("cpu_offload_layers"):
            notes.append(f"cpu_offload_layers {settings['cpu_offload_layers']} needs CUDA: 0 here")
            settings["cpu_offload_layers"] = 0
        settings["cuda_graphs"] = False
    return settings, notes


def choose_int8(app: Any, device: torch.device) -> tuple[str | None, list[dict[str, Any]]]:
    """The backend to serve with (the profile's bitsandbytes when it can run, else torchao) and every
    backend's availability."""
    table = [{"backend": b, "unavailable": int8_backends.unavailable_reason(b, device)} for b in int8_backends.BACKENDS]
    if not app.engine.quantize_int8:
        return None, table
    for row in table:
        if row["unavailable"] is None:
            return row["backend"], table
    return None, table


def gpu_processes(app: Any) -> list[str]:
    """The profile's processes that hold a CUDA context on the card (each pays one outside the allocator)."""
    names = ["VoiceServer (PersonaPlex)"]
    if app.qwen.enabled and app.qwen.device != "cpu":
        names.append("QwenKnowledge")
    if app.transcriber.enabled and app.transcriber.device != "cpu":
        names.append("Transcriber")
    return names


def cuda_context_bytes(device: torch.device) -> int | None:
    """This process's device memory outside its allocator (CUDA context, kernels, cuBLAS workspaces)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    return max(0, (total - free) - torch.cuda.memory_reserved(device))


def _meta_param_bytes(build: Any, bytes_per_param: int) -> int:
    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters()) * bytes_per_param


def measure_qwen(size: str, device: torch.device, dtype: torch.dtype, input_tokens: int, new_tokens: int) -> dict[str, Any]:
    """Build Qwen (random weights) on ``device`` and generate once at the profile's prompt and answer sizes.
    CUDA: the allocator's peak; CPU: the tensors' bytes plus the KV cache those tokens need (computed; the
    generation there is a short one that only exercises the code)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from bizra_voice.gpucheck.models import tensor_bytes

    dims = QWEN_DIMS[size]
    config = Qwen2Config(**dims)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    started = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    weights = tensor_bytes(model)
    run_input, run_new = (input_tokens, new_tokens) if cuda else (min(input_tokens, 32), min(new_tokens, 4))
    tokens = torch.randint(0, dims["vocab_size"], (1, run_input), device=device)
    with torch.no_grad():
        model.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=run_new,
                       min_new_tokens=run_new, do_sample=False, pad_token_id=0)
    head_dim = dims["hidden_size"] // dims["num_attention_heads"]
    kv = 2 * dims["num_hidden_layers"] * dims["num_key_value_heads"] * head_dim * (input_tokens + new_tokens) * \
        torch.finfo(dtype).bits // 8
    result = {"model": f"Qwen2 {size} dims", "params": sum(p.numel() for p in model.parameters()),
              "weights_bytes": weights, "kv_bytes_computed": kv, "input_tokens": input_tokens,
              "new_tokens": new_tokens, "seconds": round(time.perf_counter() - started, 2)}
    if cuda:
        torch.cuda.synchronize(device)
        result["peak_bytes"] = int(torch.cuda.max_memory_allocated(device) - before)
        result["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
        result["measured"] = "cuda allocator peak"
    else:
        result["peak_bytes"] = weights + kv
        result["measured"] = "computed (tensor bytes + KV cache)"
    del model, tokens
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def companion_reserve(app: Any, size: str, device: torch.device, card_bytes: int) -> dict[str, Any]:
    """What the profile's Qwen and Whisper take on the card: measured (Qwen on CUDA), else computed, and at
    least their allocator caps (``gpu_memory_fraction`` of the card), since each may grow to its cap."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, WhisperConfig, WhisperForConditionalGeneration

    def dtype_of(name: str) -> torch.dtype:
        return torch.float32 if name == "float32" else torch.float16 if name == "float16" else torch.bfloat16

    parts: dict[str, Any] = {}
    qwen = app.qwen
    if qwen.enabled and qwen.device != "cpu":
        dtype = dtype_of(qwen.dtype)
        full_weights = _meta_param_bytes(lambda: Qwen2ForCausalLM(Qwen2Config(**QWEN_DIMS["full"])),
                                         torch.finfo(dtype).bits // 8)
        try:
            measured = measure_qwen(size, device, dtype if device.type == "cuda" else torch.float32,
                                    min(qwen.max_input_tokens, 2048), qwen.max_new_tokens)
        except Exception as exc:  # the reserve still stands on the computed weights and the cap
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            measured = {"error": f"{type(exc).__name__}: {str(exc)[:300]}", "peak_bytes": full_weights,
                        "measured": "computed (parameters x dtype): the measurement failed"}
        cap = int(qwen.gpu_memory_fraction * card_bytes) if qwen.gpu_memory_fraction else 0
        parts["qwen"] = {"model": qwen.model, **measured, "full_size_weights_bytes_computed": full_weights,
                         "allocator_cap_bytes": cap, "reserve_bytes": max(measured["peak_bytes"], cap)}
    else:
        parts["qwen"] = {"model": qwen.model, "reserve_bytes": 0,
                         "note": "disabled" if not qwen.enabled else "runs on the CPU (qwen.device: cpu)"}
    whisper = app.transcriber
    if whisper.enabled and whisper.device != "cpu":
        dtype = dtype_of(whisper.dtype)
        weights = _meta_param_bytes(lambda: WhisperForConditionalGeneration(WhisperConfig(**WHISPER_DIMS)),
                                    torch.finfo(dtype).bits // 8)
        cap = int(whisper.gpu_memory_fraction * card_bytes) if whisper.gpu_memory_fraction else 0
        parts["whisper"] = {"model": whisper.model, "weights_bytes_computed": weights, "allocator_cap_bytes": cap,
                            "reserve_bytes": max(weights, cap), "measured": "computed (parameters x dtype)"}
    else:
        parts["whisper"] = {"model": whisper.model, "reserve_bytes": 0,
                            "note": "disabled" if not whisper.enabled else "runs on the CPU (transcriber.device: cpu)"}
    parts["total_reserve_bytes"] = sum(p["reserve_bytes"] for p in parts.values() if isinstance(p, dict))
    return parts


def fit(card_bytes: int, contexts_bytes: int, companions_bytes: int, weights_bytes: int, per_slot_bytes: int,
        workspace_bytes: int, slots: int, load_peak_bytes: int) -> dict[str, Any]:
    """Does the engine fit beside its companions on the card? (pure; the same sum on CPU and on CUDA, where
    the allocator cap enforces it for real as well)."""
    share = card_bytes - contexts_bytes
    used = companions_bytes + weights_bytes + workspace_bytes
    figures = MemoryFigures(share=share, used=used, per_slot=max(1, per_slot_bytes), reserve=CUDA_RESERVE_BYTES)
    bound = memory_bound(figures)
    serving = used + per_slot_bytes * slots
    loading = companions_bytes + load_peak_bytes
    fits_serving = bound >= max(1, slots)
    # Loading beside the companions: the product moves the LM to the GPU in its dtype before quantizing it,
    # so a Qwen that is already up must leave room for that peak, not only for the int8 result.
    fits_loading = loading <= share
    return {
        "card_bytes": card_bytes, "cuda_contexts_bytes": contexts_bytes, "allocator_share_bytes": share,
        "companions_bytes": companions_bytes, "engine_weights_bytes": weights_bytes,
        "per_slot_bytes": per_slot_bytes, "workspace_bytes": workspace_bytes, "slots": slots,
        "memory_bound": bound, "serving_bytes": serving, "loading_peak_bytes": loading,
        "headroom_bytes": share - CUDA_RESERVE_BYTES - serving,
        "fits_serving": fits_serving, "fits_loading_beside_companions": fits_loading,
        "fits": fits_serving and fits_loading,
    }


class AllocatorCap:
    """The N GiB card on a bigger one: the allocator capped and the companions' reserve held (CUDA only)."""

    def __init__(self, device: torch.device, card_bytes: int, contexts_bytes: int) -> None:
        self.device = device
        self.card_bytes = card_bytes
        self.contexts_bytes = contexts_bytes
        self.reserve: torch.Tensor | None = None
        self.fraction: float | None = None
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            share = card_bytes - contexts_bytes
            if share > total:
                raise ValueError(f"--memory-gb {card_bytes / GIB:g} is more than this card's "
                                 f"{total / GIB:.1f} GiB")
            self.fraction = share / total
            torch.cuda.set_per_process_memory_fraction(self.fraction, device)

    def hold(self, nbytes: int) -> None:
        """Allocate the companions' bytes (they count against the cap like the engine's own)."""
        if self.device.type == "cuda" and nbytes > 0 and self.reserve is None:
            self.reserve = torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def release_reserve(self) -> None:
        self.reserve = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def lift(self) -> None:
        """Back to the whole card (the check's own later steps must not inherit the cap)."""
        self.release_reserve()
        if self.device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)
