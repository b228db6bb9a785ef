"""Weight-only int8 for the 32-layer transformer: moshi's bitsandbytes path and torchao's, side by side.

The laptop profile (``engine.quantize_int8``) uses moshi's bitsandbytes ``QLinear`` (the product's
``loading.quantize_int8``). torchao's weight-only int8 is the torch-native alternative. Their wheels differ in
size (bitsandbytes 0.50: 41 MiB with every CUDA build inside; torchao 0.17: 3 MiB), which decides what a
64 MiB GPU lease can carry, so each backend reports why it cannot run instead of failing the check.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

BITSANDBYTES = "bitsandbytes"
TORCHAO = "torchao"
BACKENDS = (BITSANDBYTES, TORCHAO)


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """None when ``backend`` can quantize on ``device``; else one sentence saying why not."""
    if backend == BITSANDBYTES:
        if importlib.util.find_spec("bitsandbytes") is None:
            return ("bitsandbytes is not installed (its cp312 wheel is 41 MiB: carry it with "
                    "`scripts/gpu_wheels.sh --int8-bitsandbytes`)")
        return None
    if backend == TORCHAO:
        if importlib.util.find_spec("torchao") is None:
            return "torchao is not installed (its cp312 wheel is 3 MiB; scripts/gpu_wheels.sh carries it)"
        return None
    return f"unknown int8 backend {backend!r}"


def quantize(lm: Any, backend: str, device: torch.device) -> str:
    """Quantize ``lm.transformer``'s linears to int8 weights in place; returns a note on the path taken."""
    if backend == BITSANDBYTES:
        if device.type == "cuda":
            from bizra_voice.engine.loading import quantize_int8

            quantize_int8(lm, device)  # the product's path (moshi's replace_linear_with_qlinear)
            return "moshi's bitsandbytes QLinear (the product's engine.quantize_int8)"
        # The product refuses int8 off CUDA; bitsandbytes' CPU backend still runs moshi's QLinear, which lets
        # CI exercise the same quantized model code on the tiny checkpoint.
        from moshi.utils.quantize import replace_linear_with_qlinear

        replace_linear_with_qlinear(lm.transformer)
        return "moshi's bitsandbytes QLinear on bitsandbytes' CPU backend (the product allows int8 on CUDA only)"
    if backend == TORCHAO:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        try:
            config = Int8WeightOnlyConfig(version=2)
        except TypeError:  # torchao before the version-2 tensor
            config = Int8WeightOnlyConfig()
        quantize_(lm.transformer, config, filter_fn=lambda module, _name: isinstance(module, torch.nn.Linear))
        return f"torchao {_version('torchao')} Int8WeightOnlyConfig on the transformer's linears"
    raise ValueError(f"unknown int8 backend {backend!r}")


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"
