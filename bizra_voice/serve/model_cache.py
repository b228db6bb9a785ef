"""What the Qwen and Whisper deployments share: picking their device (making a model once per node:
``bizra_voice.build_once``)."""

from __future__ import annotations


def pick_device(requested: str, gpu_memory_fraction: float | None) -> str:
    """``auto`` -> cuda when visible; on CUDA cap this process's share (fractional num_gpus only schedules)."""
    import torch

    device = requested
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and gpu_memory_fraction:
        torch.cuda.set_per_process_memory_fraction(gpu_memory_fraction)
    return device
