"""The speed-ups of issue 6 keep their semantics: the narrower CPU top-k samples the same tokens, and tick
coalescing waits only for frames that are due and never past one tick time."""

from __future__ import annotations

import collections
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bizra_voice.engine import runtime as runtime_module
from bizra_voice.engine.runtime import EngineRuntime, _SlotState
from bizra_voice.engine.sampling import sample_tokens


def test_top_k_width_bounded_by_the_largest_requested_k_samples_the_same_tokens():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 2048, generator=gen) * 3
    topk = torch.tensor([1, 25, 250, 100, 7, 250])
    temp = torch.tensor([0.8, 0.7, 1.0, 0.5, 1.2, 0.8])
    greedy = torch.tensor([False, False, False, True, False, False])
    seed = torch.arange(6) * 7919 + 11
    for position in range(5):
        pos = torch.full((6,), position)
        wide = sample_tokens(logits, temp, topk, greedy, seed, pos, 3, 2048)
        narrow = sample_tokens(logits, temp, topk, greedy, seed, pos, 3, int(topk.max()))
        assert torch.equal(wide, narrow)


def _runtime(ewma_ms: float | None, states: dict[int, _SlotState]) -> SimpleNamespace:
    return SimpleNamespace(_live=states, _tick_ewma_ms=ewma_ms)


NOW = 1000.0  # the frozen clock the coalescing decision is made at (no real time passes in this test)


def _state(frames: int, arrived_s_ago: float, last_s_ago: float | None) -> _SlotState:
    state = _SlotState(session=None)  # type: ignore[arg-type]
    state.frames = collections.deque(np.zeros((frames, 4), np.float32))
    state.arrivals = collections.deque([NOW - arrived_s_ago] * frames)
    state.last_arrival = None if last_s_ago is None else NOW - last_s_ago
    return state


@pytest.fixture
def frozen_clock(monkeypatch):
    """The runtime's ``time.monotonic`` stands still at ``NOW``: the waits are exact, whatever the machine."""
    monkeypatch.setattr(runtime_module, "time", SimpleNamespace(monotonic=lambda: NOW))


def test_coalescing_waits_only_for_due_frames_and_at_most_one_tick_time(frozen_clock):
    wait = EngineRuntime._coalesce_wait
    slack = runtime_module._ARRIVAL_SLACK_S
    assert wait(_runtime(20.0, {0: _state(0, 0, 0.01)})) is None  # nothing queued
    assert wait(_runtime(20.0, {0: _state(1, 0, 0)})) == 0.0  # alone: tick at once
    # Slot 1's next frame is due in 5 ms (< one tick time): wait for it (plus the arrival slack), no longer.
    w = wait(_runtime(20.0, {0: _state(1, 0, 0), 1: _state(0, 0, 0.075)}))
    assert w == pytest.approx(0.005 + slack)
    # Slot 1's next frame is due in 40 ms, past the 20 ms window: tick now.
    assert wait(_runtime(20.0, {0: _state(1, 0, 0), 1: _state(0, 0, 0.04)})) == 0.0
    # A session that went quiet (its frame is long overdue) is not waited for.
    assert wait(_runtime(20.0, {0: _state(1, 0, 0), 1: _state(0, 0, 0.5)})) == 0.0
    # The window never exceeds a quarter frame, however slow the tick: due in 15 ms is waited for ...
    assert wait(_runtime(500.0, {0: _state(1, 0, 0), 1: _state(0, 0, 0.065)})) == pytest.approx(0.015 + slack)
    # ... due in 25 ms (past 20 ms = a quarter of the 80 ms frame) is not.
    assert wait(_runtime(500.0, {0: _state(1, 0, 0), 1: _state(0, 0, 0.055)})) == 0.0
