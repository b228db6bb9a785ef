"""Build the PersonaPlex LM (dep_q=16 checkpoint sliced to dep_q=8), Mimi and the text tokenizer.

Stock moshi's ``LMGen`` expects ``dep_q`` agent codebooks and ``n_q - dep_q`` user codebooks, so the
checkpoint's 16-step depformer (8 agent + 8 user predictions) is cut to its first 8 steps: the agent tokens
are unchanged, 0.68 B parameters and half the depformer work disappear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bizra_voice.engine.checkpoint import CheckpointError, CheckpointFiles

_DROP_PATTERNS = (
    (re.compile(r"^depformer_in\.(\d+)\."), 0),
    (re.compile(r"^linears\.(\d+)\."), 0),
    (re.compile(r"^depformer_norms\.(\d+)\."), 0),
    (re.compile(r"^depformer_emb\.(\d+)\."), 1),
    (re.compile(r"^depformer\.layers\.\d+\.gating\.(\d+)\."), 0),
)
_STACKED_ATTENTION = re.compile(r"^depformer\.layers\.\d+\.self_attn\.(in_proj_weight|out_proj\.weight)$")


def checkpoint_dep_q(state: dict[str, torch.Tensor]) -> int:
    """Number of depformer steps stored in a checkpoint (16 for PersonaPlex)."""
    steps = {int(m.group(1)) for key in state if (m := re.match(r"^linears\.(\d+)\.", key))}
    return max(steps) + 1 if steps else 0


def slice_depformer(state: dict[str, torch.Tensor], from_q: int, to_q: int) -> dict[str, torch.Tensor]:
    """Keep the first ``to_q`` depformer steps of a ``from_q``-step state dict (rows are step-major)."""
    if to_q == from_q:
        return state
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        dropped = False
        for pattern, shift in _DROP_PATTERNS:
            m = pattern.match(key)
            if m and int(m.group(1)) + shift >= to_q:
                dropped = True
                break
        if dropped:
            continue
        if _STACKED_ATTENTION.match(key):
            if value.shape[0] % from_q:
                raise CheckpointError(f"{key} has {value.shape[0]} rows, not a multiple of {from_q} steps.")
            value = value[: value.shape[0] // from_q * to_q].contiguous()
        out[key] = value
    return out


@dataclass
class ModelBundle:
    """The loaded models and what the engine needs to know about them."""

    lm: Any  # moshi.models.lm.LMModel at dep_q=8
    mimi: Any  # moshi.models.compression.MimiModel (batched streaming, the tick's codec)
    voice_mimi: Any  # a second Mimi for encoding WAV voice prompts outside the tick's batch
    tokenizer: Any  # sentencepiece.SentencePieceProcessor
    files: CheckpointFiles
    device: torch.device
    dtype: torch.dtype

    @property
    def context(self) -> int:
        return int(self.files.lm_kwargs.get("context", 3000))


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("device 'cuda' was requested but no CUDA GPU is visible; use device 'cpu' "
                              "(or the CPU dev profile, serve_config.cpu.yaml).")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
            "float64": torch.float64}[requested]


def _load_state(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); download it again.") from exc


def build_lm(files: CheckpointFiles, device: torch.device, dtype: torch.dtype, dep_q: int = 8) -> Any:
    """Load the LM checkpoint at its stored dep_q and build it at ``dep_q`` (8 for stock ``LMGen``)."""
    from moshi.models.lm import LMModel

    kwargs = dict(files.lm_kwargs)
    kwargs.pop("depformer_causal", None)
    kwargs.pop("depformer_context", None)
    stored_q = int(kwargs.get("dep_q", 16))
    kwargs["dep_q"] = dep_q
    state = _load_state(files.lm, torch.device("cpu"))
    found_q = checkpoint_dep_q(state)
    if found_q != stored_q:
        raise CheckpointError(f"{files.lm} has {found_q} depformer steps but the config says {stored_q}; "
                              "the file does not belong to this checkpoint.")
    state = slice_depformer(state, stored_q, dep_q)
    with torch.device("meta"):
        model = LMModel(device="meta", dtype=dtype, **kwargs)
    expected = model.state_dict()
    # The stacked depformer attention is split by a load hook, so compare shapes on plain keys only.
    for key, value in state.items():
        if key in expected and tuple(expected[key].shape) != tuple(value.shape):
            raise CheckpointError(f"{files.lm} does not match the PersonaPlex dimensions: {key} is "
                                  f"{tuple(value.shape)}, expected {tuple(expected[key].shape)}.")
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    try:
        model.load_state_dict(state, assign=True, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(f"{files.lm} does not fit the PersonaPlex layout: {' '.join(first)}") from exc
    model = model.to(device)
    leftover = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"{files.lm} lacks weights for {leftover[:3]}.")
    model.eval()
    return model


def build_mimi(files: CheckpointFiles, device: torch.device) -> Any:
    from moshi.models import loaders

    try:
        return loaders.get_mimi(str(files.mimi), mimi_config=files.mimi_config, device=device,
                                num_codebooks=files.mimi_num_codebooks)
    except RuntimeError as exc:
        raise CheckpointError(f"{files.mimi} does not fit the Mimi layout: {str(exc).splitlines()[0]}") from exc


def load_tokenizer(path: Path) -> Any:
    import sentencepiece

    try:
        return sentencepiece.SentencePieceProcessor(model_file=str(path))  # type: ignore[call-arg]
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a SentencePiece model ({exc}).") from exc


def quantize_int8(lm: Any, device: torch.device) -> None:
    """moshi's bitsandbytes int8 linears for the big transformer (CUDA only), layer by layer: the LM is
    built on the host and each transformer layer is moved to the GPU and quantized in turn, so the GPU never
    holds the whole bf16 transformer (14.3 GiB: it would not load beside Qwen on a 16 GB card)."""
    if device.type != "cuda":
        raise CheckpointError("quantize_int8 needs a CUDA GPU (bitsandbytes int8); turn it off on CPU.")
    from moshi.utils.quantize import replace_linear_with_qlinear

    for layer in lm.transformer.layers:
        layer.to(device)
        replace_linear_with_qlinear(layer)
        torch.cuda.empty_cache()
    lm.to(device)  # embeddings, depformer and heads stay bf16


def offload_layers(lm: Any, count: int, device: torch.device) -> None:
    """Keep the last ``count`` transformer layers in pinned CPU memory and copy them in for each call."""
    if count <= 0:
        return
    if device.type != "cuda":
        raise CheckpointError("cpu_offload_layers only makes sense on a GPU; set it to 0 on CPU.")
    layers = list(lm.transformer.layers)[-count:]
    for layer in layers:
        host = {name: p.detach().to("cpu").pin_memory() for name, p in layer.named_parameters()}
        for name, p in layer.named_parameters():
            p.data = host[name]

        def _to_gpu(module: torch.nn.Module, _args: Any, _host: dict = host) -> None:
            for name, p in module.named_parameters():
                p.data = _host[name].to(device, non_blocking=True)

        def _to_cpu(module: torch.nn.Module, _args: Any, _out: Any, _host: dict = host) -> None:
            for name, p in module.named_parameters():
                p.data = _host[name]

        layer.register_forward_pre_hook(_to_gpu)
        layer.register_forward_hook(_to_cpu)


def load_bundle(files: CheckpointFiles, device: torch.device, dtype: torch.dtype,
                int8: bool = False, cpu_offload_layers: int = 0) -> ModelBundle:
    lm = build_lm(files, torch.device("cpu") if int8 else device, dtype)
    if int8:
        quantize_int8(lm, device)
    offload_layers(lm, cpu_offload_layers, device)
    mimi = build_mimi(files, device)
    voice_mimi = build_mimi(files, device)
    tokenizer = load_tokenizer(files.tokenizer)
    if tokenizer.get_piece_size() > int(files.lm_kwargs.get("text_card", 32000)):
        raise CheckpointError(f"{files.tokenizer} has {tokenizer.get_piece_size()} pieces, more than the LM's "
                              f"text_card {files.lm_kwargs.get('text_card')}: wrong tokenizer file.")
    return ModelBundle(lm=lm, mimi=mimi, voice_mimi=voice_mimi, tokenizer=tokenizer, files=files,
                       device=device, dtype=dtype)
