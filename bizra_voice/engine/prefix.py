"""Stepping a batched streaming model on the first ``n`` of its B rows, so a tick costs what is in use.

moshi's streaming modules keep per-row state (KV caches, codec buffers, offsets) in tensors whose first
dimension is the batch. ``PrefixStates`` swaps each module's state for a *view state* whose tensors are
``[:n]`` slices of the full ones (same storage: every in-place update lands in the full state) for the
duration of one step, then restores the full states. What a step *rebinds* instead of updating in place
(LMGen's ``offsets``, a conv's ``first`` flag, the ``offset_cpu`` counters) is copied back into the full
state's rows. View states are cached per ``n``; each gets its own ``CUDAGraphed`` wrappers, so on a GPU
one CUDA graph is captured per bucket size (graphed code only updates state in place).

Rows ``n..B-1`` are simply not computed: the engine only does this when none of them is active, and
slots are handed out lowest-first (``slots.SlotTable``) so the active rows stay a short prefix.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from moshi.modules.transformer import RingKVCache
from moshi.utils.compile import CUDAGraphed


def buckets(size: int) -> list[int]:
    """Prefix sizes the engine steps with: powers of two below ``size``, and ``size`` itself."""
    out, n = [], 1
    while n < size:
        out.append(n)
        n *= 2
    return out + [size]


def bucket_for(rows_needed: int, size: int) -> int:
    """The smallest bucket covering ``rows_needed`` rows (at least 1)."""
    for n in buckets(size):
        if n >= rows_needed:
            return n
    return size


class PrefixStates:
    """View states of the first ``n`` rows of one streaming module tree (see the module docstring)."""

    def __init__(self, module: Any, batch_size: int) -> None:
        self.module = module
        self.batch_size = batch_size
        self._views: dict[int, dict[str, Any]] = {}

    @contextmanager
    def rows(self, n: int) -> Iterator[None]:
        if n >= self.batch_size:
            yield
            return
        full = self.module.get_streaming_state()
        views = self._views.get(n)
        if views is None:
            views = self._views[n] = {name: self._view_state(state, n) for name, state in full.items()}
        for name, state in full.items():
            self._slice_into(views[name], state, n)
        self.module.set_streaming_state(views)
        try:
            yield
        finally:
            self.module.set_streaming_state(full)
            for name, state in full.items():
                self._copy_back(views[name], state, n)

    def _batched(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == self.batch_size

    def _view_state(self, state: Any, n: int) -> Any:
        view = copy.copy(state)
        view.batch_size = n
        for name, value in vars(state).items():
            if isinstance(value, CUDAGraphed):  # a graph per bucket: shapes differ from the full batch's
                setattr(view, name, CUDAGraphed(value.func, disable=value.disable))
            elif isinstance(value, RingKVCache):
                setattr(view, name, copy.copy(value))
        return view

    def _slice_into(self, view: Any, state: Any, n: int) -> None:
        """Point the view at the full state's current tensors (a full step may have rebound some)."""
        for name, value in vars(state).items():
            if self._batched(value):
                setattr(view, name, value[:n])
            elif isinstance(value, RingKVCache):
                kv = getattr(view, name)
                kv.cache = value.cache[:, :n]
                kv.end_offset = value.end_offset[:n] if self._batched(value.end_offset) else value.end_offset
            elif isinstance(value, int) and not isinstance(value, bool) and name != "batch_size":
                setattr(view, name, value)

    def _copy_back(self, view: Any, state: Any, n: int) -> None:
        """Rows the step rebound (rather than updated in place) go back into the full state."""
        for name, value in vars(state).items():
            if self._batched(value):
                stepped = getattr(view, name)
                if stepped.data_ptr() != value.data_ptr() or stepped.shape[0] != n:
                    value[:n] = stepped
            elif isinstance(value, RingKVCache):
                kv = getattr(view, name)
                if kv.end_offset.data_ptr() != value.end_offset.data_ptr():
                    value.end_offset[: kv.end_offset.shape[0]] = kv.end_offset
            elif isinstance(value, int) and not isinstance(value, bool) and name != "batch_size":
                setattr(state, name, getattr(view, name))


@dataclass(frozen=True)
class Rows:
    """Views of the first ``n`` rows of the engine's per-row tensors (same storage), for one prefix size."""

    n: int
    position: torch.Tensor
    force_text: torch.Tensor
    force_audio: torch.Tensor
    guide_tokens: torch.Tensor
    guide_length: torch.Tensor
    guide_index: torch.Tensor
    guided: torch.Tensor
    model_text: torch.Tensor
    sampled_guided: torch.Tensor
    sampled_model_text: torch.Tensor
    history: torch.Tensor
    history_count: torch.Tensor
    temp_text: torch.Tensor
    topk_text: torch.Tensor
    temp_audio: torch.Tensor
    topk_audio: torch.Tensor
    greedy: torch.Tensor
    seed: torch.Tensor


def pad_rows(array: np.ndarray, rows: int, fill: float) -> np.ndarray:
    """``array`` [n, ...] grown to [rows, ...] (rows past n were not stepped: they produced nothing)."""
    if array.shape[0] == rows:
        return array
    out = np.full((rows, *array.shape[1:]), fill, dtype=array.dtype)
    out[: array.shape[0]] = array
    return out
