"""Tick time per batch size, eager and with CUDA graphs, until memory (or the step's time budget) ends.

Each point is ``calibrate.measure_batch``: a fresh B-row engine, warm-up ticks (graph capture), then timed
full ticks with every row active, plus the allocator's view of the state and workspace it needed. The
product's calibration (``engine.slots: auto``) uses the same probe; the check adds the eager curve beside it
(graphs are what make real time on a GPU) and bisects between the last passing and first failing batch so
the time bound is exact rather than a power of two.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from bizra_voice.engine.capacity import TickStats, next_probe

BATCHES = (1, 2, 4, 8, 16, 32, 64)
GRAPHS = "graphs"
EAGER = "eager"


@dataclass
class Sweep:
    """The measured curves by mode and why each one stopped where it did."""

    curves: dict[str, list[TickStats]] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)
    out_of_memory_at: dict[str, int] = field(default_factory=dict)
    refined: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"curves": {mode: [asdict(s) for s in curve] for mode, curve in self.curves.items()},
                "stopped": self.stopped, "out_of_memory_at": self.out_of_memory_at, "refined": self.refined,
                "seconds": self.seconds, "state_bytes_per_slot": {m: state_slope(c) for m, c in self.curves.items()}}


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "alloc_failed" in text


def recover(bundle: Any) -> None:
    """After a probe failed (OOM while building or capturing), leave streaming mode and free its memory."""
    for module in (bundle.lm, bundle.mimi):
        module._stop_streaming()
    gc.collect()
    if bundle.device.type == "cuda":
        torch.cuda.synchronize(bundle.device)
        torch.cuda.empty_cache()


def state_slope(curve: list[TickStats]) -> int | None:
    """Bytes of streaming state one more slot costs: the least-squares slope of state bytes over B."""
    points = [(s.batch, s.state_bytes) for s in curve if s.state_bytes > 0]
    if len(points) < 2:
        return None
    xs, ys = np.array(points, dtype=np.float64).T
    return int(round(float(np.polyfit(xs, ys, 1)[0])))


def probe(bundle: Any, batch: int, mode: str, ticks: int, warmup: int, budget_ms: float | None = None,
          session_ms: float = 0.0, attempts: int = 2) -> TickStats:
    """One point. With ``budget_ms`` (the product's mode) it is measured as the product's calibration does
    (``measure_within_budget``: a miss is re-measured, the best run counts), else once."""
    from bizra_voice.engine.calibrate import measure_batch, measure_within_budget

    if budget_ms is not None:
        return measure_within_budget(bundle, batch, budget_ms, ticks=ticks, graphs=mode == GRAPHS, attempts=attempts,
                                     session_ms=session_ms)
    return measure_batch(bundle, batch, ticks=ticks, warmup=warmup, graphs=mode == GRAPHS)


def _log_point(progress: Any, mode: str, stats: TickStats, took: float) -> None:
    progress.log(f"  {mode:6s} B={stats.batch:3d}: p50 {stats.p50_ms:7.2f} ms  p99 {stats.p99_ms:7.2f} ms  "
                 f"state {stats.state_bytes / 2**20:8.1f} MiB  workspace {stats.workspace_bytes / 2**20:7.1f} MiB"
                 f"  ({took:.1f} s)")


def sweep(bundle: Any, modes: list[str], batches: tuple[int, ...], ticks: int, warmup: int, progress: Any,
          max_batch: int | None = None, budget_ms: float | None = None, session_ms: float = 0.0,
          attempts: int = 2) -> Sweep:
    """Measure every mode over ``batches`` (ascending), stopping a mode at its first out-of-memory, when the
    step's time budget would not cover the next point, or past ``max_batch``. ``budget_ms``: measure as the
    product's calibration does (see ``probe``)."""
    result = Sweep()
    for mode in modes:
        curve: list[TickStats] = []
        result.curves[mode] = curve
        started = time.monotonic()
        last_took = 0.0
        for batch in batches:
            if max_batch is not None and batch > max_batch:
                result.stopped[mode] = f"B={batch} is above the memory bound ({max_batch})"
                break
            # A point costs about as much as the last one times the batch growth (ticks grow with B).
            expected = last_took * (batch / curve[-1].batch if curve else 1.0)
            if curve and expected > progress.step_remaining() / (len(modes) - modes.index(mode)):
                result.stopped[mode] = f"time budget: B={batch} would take about {expected:.0f} s"
                break
            t0 = time.monotonic()
            try:
                stats = probe(bundle, batch, mode, ticks, warmup, budget_ms, session_ms, attempts)
            except Exception as exc:
                recover(bundle)
                if is_out_of_memory(exc):
                    result.out_of_memory_at[mode] = batch
                    result.stopped[mode] = f"out of memory at B={batch}"
                else:
                    result.stopped[mode] = f"B={batch} failed: {type(exc).__name__}: {str(exc)[:300]}"
                progress.log(f"  {mode:6s} B={batch:3d}: {result.stopped[mode]}")
                break
            last_took = time.monotonic() - t0
            curve.append(stats)
            _log_point(progress, mode, stats, last_took)
        result.seconds[mode] = round(time.monotonic() - started, 2)
    return result


def refine(bundle: Any, result: Sweep, mode: str, budget_ms: float, ceiling: int, ticks: int, warmup: int,
           progress: Any, max_probes: int, session_ms: float = 0.0, attempts: int = 2) -> None:
    """Bisect the product mode's curve between the last batch within ``budget_ms`` and the first over it
    (capacity.next_probe), within ``ceiling`` and the step's time budget."""
    curve = result.curves.get(mode, [])
    oom = result.out_of_memory_at.get(mode)
    if oom is not None:
        ceiling = min(ceiling, oom - 1)
    for _ in range(max_probes):
        batch = next_probe(curve, budget_ms, ceiling, session_ms)
        if batch is None:
            return
        last = max(curve, key=lambda s: s.batch) if curve else None
        if last is not None and progress.step_remaining() < 3 * last.p99_ms * (ticks + warmup) / 1000 + 5:
            result.stopped[f"{mode}-refine"] = "time budget"
            return
        t0 = time.monotonic()
        try:
            stats = probe(bundle, batch, mode, ticks, warmup, budget_ms, session_ms, attempts)
        except Exception as exc:
            recover(bundle)
            if is_out_of_memory(exc):
                result.out_of_memory_at[mode] = min(batch, result.out_of_memory_at.get(mode, batch))
                ceiling = batch - 1
                progress.log(f"  {mode:6s} B={batch:3d}: out of memory")
                continue
            result.stopped[f"{mode}-refine"] = f"B={batch} failed: {type(exc).__name__}: {str(exc)[:300]}"
            return
        curve.append(stats)
        curve.sort(key=lambda s: s.batch)
        result.refined.append(batch)
        _log_point(progress, mode, stats, time.monotonic() - t0)
