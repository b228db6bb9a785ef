"""How many sessions one engine replica holds: sizing from measured figures (pure: no torch, no Ray).

Two bounds decide ``engine.slots: auto``:

- **memory bound**: (this replica's share of device memory - what the models already use - a reserve) /
  the measured bytes one more slot costs (its KV cache and streaming state, plus its share of the tick's
  workspace);
- **time bound**: the largest batch size B whose calibrated p99 tick *plus B times the per-session serving
  work of one frame* (Opus decode + encode, measured; it runs on the replica's event loop under the GIL,
  so it adds up with the tick in the worst case) stays under ``engine.tick_budget_ms`` (default 60 of the
  80 ms frame), every smaller measured B passing too (a noisy machine must not "pass" a large B by luck).

Slots = the smaller of both (and of ``engine.max_slots``). An explicit number overrides the time bound but is
still checked against memory, with a sentence naming both numbers when it does not fit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

AUTO = "auto"


class CapacityError(ValueError):
    """The requested slot count cannot fit this replica; the text says why and what fits."""


@dataclass(frozen=True)
class TickStats:
    """Measured ticks of one batch size (all rows active)."""

    batch: int
    graphs: bool
    ticks: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    state_bytes: int = 0  # streaming state (KV caches, codec buffers) allocated for this batch
    workspace_bytes: int = 0  # peak allocator growth during the ticks (activations, graph pools)


@dataclass(frozen=True)
class MemoryFigures:
    """Device memory as measured on this replica (bytes). ``per_slot`` is what one more slot costs."""

    share: int  # what this replica may use (its share of the device, or of the host's free RAM)
    used: int  # already taken by weights and codecs
    per_slot: int
    reserve: int = 0  # kept free for fragmentation, prefill activations and the CUDA context's growth


@dataclass
class SlotChoice:
    """The decision and everything it was made from (logged; shown in ``/api/health``)."""

    slots: int
    chosen_by: str  # "explicit" | "time" | "memory" | "max_slots" | "minimum"
    requested: int | str
    memory_bound: int | None
    time_bound: int | None
    budget_ms: float
    device: str = ""
    memory: MemoryFigures | None = None
    curve: list[TickStats] = field(default_factory=list)
    session_ms: float = 0.0  # measured serving work per session and frame, added to the tick per slot
    realtime: bool = True  # False: even one session misses the budget on this machine
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.slots, "chosen_by": self.chosen_by, "requested": self.requested,
            "memory_bound": self.memory_bound, "time_bound": self.time_bound, "tick_budget_ms": self.budget_ms,
            "device": self.device, "realtime": self.realtime, "note": self.note,
            "session_overhead_ms": self.session_ms,
            "memory": asdict(self.memory) if self.memory is not None else None,
            "calibration": [asdict(t) for t in self.curve],
        }

    def summary(self) -> str:
        bounds = f"memory bound {self.memory_bound if self.memory_bound is not None else '-'}, " \
                 f"time bound {self.time_bound if self.time_bound is not None else '-'}"
        return f"{self.slots} slots ({self.chosen_by}; {bounds}; tick budget {self.budget_ms:g} ms)"


def memory_bound(memory: MemoryFigures) -> int:
    """Slots that fit in memory (0 when not even one does)."""
    if memory.per_slot <= 0:
        raise ValueError("per_slot must be positive")
    free = memory.share - memory.used - memory.reserve
    return max(0, free // memory.per_slot)


def frame_cost_ms(stats: TickStats, session_ms: float = 0.0) -> float:
    """Worst-case work per 80 ms frame with ``stats.batch`` sessions: p99 tick + their serving work."""
    return stats.p99_ms + stats.batch * session_ms


def time_bound(curve: list[TickStats], budget_ms: float, session_ms: float = 0.0) -> int:
    """The largest measured batch whose frame cost (p99 tick + batch x ``session_ms``), and every smaller
    measured batch's, is within budget. Returns 0 when the smallest measured batch already misses it."""
    best = 0
    for stats in sorted(curve, key=lambda s: s.batch):
        if frame_cost_ms(stats, session_ms) > budget_ms:
            break
        best = stats.batch
    return best


def next_probe(curve: list[TickStats], budget_ms: float, ceiling: int, session_ms: float = 0.0) -> int | None:
    """The next batch size to measure: doubling while within budget, then bisection between the last
    passing and the first failing size; None when the answer is known (or the ceiling is reached)."""
    if not curve:
        return 1 if ceiling >= 1 else None
    if session_ms > 0:  # no batch beyond what the serving work alone allows can pass
        ceiling = min(ceiling, max(1, int(budget_ms // session_ms)))
    measured = {s.batch for s in curve}
    passing = time_bound(curve, budget_ms, session_ms)
    failing = sorted(s.batch for s in curve if s.batch > passing)
    if not failing:
        if passing >= ceiling:
            return None
        candidate = min(ceiling, max(1, passing * 2))
    else:
        low, high = passing, failing[0]
        if high - low <= 1:
            return None
        candidate = (low + high) // 2 if low else None
        if candidate is None:
            return None
    return None if candidate in measured else candidate


def choose_slots(requested: int | str, *, max_slots: int, budget_ms: float, memory: MemoryFigures | None,
                 curve: list[TickStats], device: str = "", session_ms: float = 0.0) -> SlotChoice:
    """Decide the slot count. ``memory`` None = not measurable here (no bound). Raises CapacityError for an
    explicit count that does not fit in memory."""
    mem_bound = memory_bound(memory) if memory is not None else None
    t_bound = time_bound(curve, budget_ms, session_ms) if curve else None
    if requested != AUTO:
        slots = int(requested)
        if mem_bound is not None and slots > mem_bound:
            raise CapacityError(
                f"engine.slots: {slots} does not fit this replica's memory: {_gib(memory.share)} share, "
                f"{_gib(memory.used)} used by the models, {_gib(memory.per_slot)} per slot -> at most "
                f"{mem_bound} slots. Set engine.slots to {max(mem_bound, 1)} or 'auto', or give the replica "
                "a larger GPU share (voice_server.num_gpus / engine.memory_fraction).")
        choice = SlotChoice(slots, "explicit", requested, mem_bound, t_bound, budget_ms, device, memory, curve,
                            session_ms)
        if t_bound is not None and slots > t_bound:
            choice.note = (f"{slots} slots requested; the calibrated time bound is {t_bound}: ticks at full load "
                           f"are expected to exceed {budget_ms:g} ms")
        return choice
    candidates = {"max_slots": max_slots}
    if mem_bound is not None:
        candidates["memory"] = mem_bound
    if t_bound is not None:
        candidates["time"] = t_bound
    chosen_by, slots = min(candidates.items(), key=lambda kv: (kv[1], _PRIORITY[kv[0]]))
    choice = SlotChoice(slots, chosen_by, requested, mem_bound, t_bound, budget_ms, device, memory, curve,
                        session_ms)
    if slots < 1:
        choice.slots = 1
        choice.chosen_by = "minimum"
        choice.realtime = chosen_by != "time"
        if chosen_by == "memory":
            raise CapacityError(
                f"Not even one session fits this replica's memory ({_gib(memory.share)} share, "
                f"{_gib(memory.used)} used by the models, {_gib(memory.per_slot)} per slot): give it a larger "
                "GPU share, int8 weights (engine.quantize_int8) or a smaller context.")
        smallest = min(curve, key=lambda s: s.batch)
        choice.note = (f"this machine cannot hold one real-time session: one slot's p99 tick plus its serving "
                       f"work is {frame_cost_ms(smallest, session_ms):.1f} ms, over the {budget_ms:g} ms budget; "
                       "serving 1 slot anyway")
    return choice


_PRIORITY = {"memory": 0, "time": 1, "max_slots": 2}


def _gib(value: int) -> str:
    return f"{value / 2**30:.2f} GiB"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])
