"""Slot sizing from measured figures (engine/capacity.py): memory bound, time bound, probes, overrides."""

from __future__ import annotations

import pytest

from bizra_voice.engine.capacity import (
    CapacityError,
    MemoryFigures,
    TickStats,
    choose_slots,
    memory_bound,
    next_probe,
    percentile,
    time_bound,
)

GIB = 2**30


def curve(*points: tuple[int, float]) -> list[TickStats]:
    return [TickStats(batch=b, graphs=True, ticks=24, p50_ms=p99 * 0.8, p99_ms=p99, max_ms=p99) for b, p99 in points]


def h100_memory(per_slot_gib: float = 1.57) -> MemoryFigures:
    # 80 GB card, 0.7 share; 15.4 GB of weights + 0.3 GB Mimi in use; 1 GiB reserve
    return MemoryFigures(share=int(0.7 * 80 * 1e9), used=int(15.7e9), per_slot=int(per_slot_gib * GIB), reserve=GIB)


def test_memory_bound_from_given_sizes():
    assert memory_bound(h100_memory()) == (int(0.7 * 80e9) - int(15.7e9) - GIB) // int(1.57 * GIB)
    assert memory_bound(MemoryFigures(share=10 * GIB, used=9 * GIB, per_slot=2 * GIB)) == 0
    with pytest.raises(ValueError):
        memory_bound(MemoryFigures(share=1, used=0, per_slot=0))


def test_time_bound_is_the_largest_passing_prefix_of_the_measured_curve():
    measured = curve((1, 20.0), (2, 22.0), (4, 30.0), (8, 45.0), (16, 70.0))
    assert time_bound(measured, 60.0) == 8
    assert time_bound(measured, 80.0) == 16
    # a noisy large batch that "passes" after a failing smaller one does not count
    assert time_bound(curve((1, 20.0), (2, 65.0), (4, 50.0)), 60.0) == 1
    assert time_bound(curve((1, 90.0)), 60.0) == 0


def test_time_bound_adds_each_sessions_serving_work():
    measured = curve((1, 20.0), (2, 22.0), (4, 30.0), (8, 45.0))
    assert time_bound(measured, 60.0, session_ms=1.0) == 8  # 45 + 8
    assert time_bound(measured, 60.0, session_ms=2.5) == 4  # 30 + 10 passes, 45 + 20 does not


def test_probes_double_then_bisect_and_stop():
    budget, ceiling = 60.0, 64
    assert next_probe([], budget, ceiling) == 1
    measured = curve((1, 20.0), (2, 22.0))
    assert next_probe(measured, budget, ceiling) == 4
    measured += curve((4, 30.0), (8, 45.0), (16, 70.0))
    assert next_probe(measured, budget, ceiling) == 12
    measured += curve((12, 58.0))
    assert next_probe(measured, budget, ceiling) == 14
    measured += curve((14, 61.0))
    assert next_probe(measured, budget, ceiling) == 13
    measured += curve((13, 59.0))
    assert next_probe(measured, budget, ceiling) is None
    assert time_bound(measured, budget) == 13
    # stops at the ceiling (memory or max_slots) and when even one slot fails
    assert next_probe(curve((1, 5.0), (2, 5.0), (4, 5.0)), budget, 4) is None
    assert next_probe(curve((1, 90.0), (2, 95.0)), budget, 64) is None
    # the serving work alone caps the probes: 60 ms / 10 ms per session = 6
    assert next_probe(curve((1, 5.0), (2, 5.0), (4, 5.0)), budget, 64, session_ms=10.0) == 6


def test_auto_takes_the_smaller_bound_and_says_which():
    measured = curve((1, 20.0), (2, 22.0), (4, 30.0), (8, 45.0), (16, 70.0), (12, 58.0))
    by_time = choose_slots("auto", max_slots=64, budget_ms=60.0, memory=h100_memory(), curve=measured)
    assert (by_time.slots, by_time.chosen_by, by_time.time_bound) == (12, "time", 12)
    assert by_time.memory_bound == memory_bound(h100_memory()) and by_time.realtime
    small_card = MemoryFigures(share=24 * GIB, used=16 * GIB, per_slot=int(1.5 * GIB), reserve=GIB)
    by_memory = choose_slots("auto", max_slots=64, budget_ms=60.0, memory=small_card, curve=measured)
    assert (by_memory.slots, by_memory.chosen_by) == (4, "memory")
    capped = choose_slots("auto", max_slots=6, budget_ms=60.0, memory=h100_memory(), curve=measured)
    assert (capped.slots, capped.chosen_by) == (6, "max_slots")
    info = by_time.to_dict()
    assert info["chosen"] == 12 and info["chosen_by"] == "time" and len(info["calibration"]) == 6
    assert "memory bound" in by_time.summary() and "time bound 12" in by_time.summary()


def test_a_machine_too_slow_for_one_session_still_serves_one_and_says_so():
    choice = choose_slots("auto", max_slots=64, budget_ms=60.0, memory=None, curve=curve((1, 140.0)))
    assert choice.slots == 1 and choice.chosen_by == "minimum" and not choice.realtime
    assert "cannot hold one real-time session" in choice.note and "140.0 ms" in choice.note


def test_explicit_count_overrides_time_but_not_memory():
    measured = curve((1, 20.0), (2, 70.0))
    explicit = choose_slots(4, max_slots=64, budget_ms=60.0, memory=h100_memory(), curve=measured)
    assert (explicit.slots, explicit.chosen_by) == (4, "explicit") and "time bound is 1" in explicit.note
    with pytest.raises(CapacityError, match=r"engine.slots: 40 does not fit .* at most 23 slots"):
        choose_slots(40, max_slots=64, budget_ms=60.0, memory=h100_memory(), curve=[])
    no_room = MemoryFigures(share=16 * GIB, used=16 * GIB, per_slot=GIB)
    with pytest.raises(CapacityError, match="Not even one session fits"):
        choose_slots("auto", max_slots=64, budget_ms=60.0, memory=no_room, curve=measured)


def test_percentile_is_nearest_rank():
    assert percentile([], 0.99) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile(list(range(1, 101)), 0.99) == 99
    assert percentile([5.0], 0.99) == 5.0
