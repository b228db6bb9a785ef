"""Progress lines with elapsed times, and the per-step time budgets that keep a full run inside a GPU loan.

A lent GPU machine gives the check a few minutes; every step announces itself with the time since the start,
so a run cut off at its limit still shows where the time went, and steps that can shorten themselves (the
tick sweep, the real-time runs) ask how much of their budget is left.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO


class Progress:
    """Prints ``[  12.3 s] message`` lines and records how long each named step took."""

    def __init__(self, total_budget_s: float, stream: TextIO | None = None) -> None:
        self.started = time.monotonic()
        self.total_budget_s = total_budget_s
        self.stream = stream or sys.stdout
        self.steps: dict[str, float] = {}
        self._step_deadline: float | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        """Seconds left of the whole run's budget (negative once over)."""
        return self.total_budget_s - self.elapsed()

    def step_remaining(self) -> float:
        """Seconds left of the current step's budget (the whole run's when no step is open)."""
        if self._step_deadline is None:
            return self.remaining()
        return min(self._step_deadline - time.monotonic(), self.remaining())

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():7.1f} s] {message}", file=self.stream, flush=True)

    @contextlib.contextmanager
    def step(self, name: str, budget_s: float) -> Iterator[None]:
        """Announce a step, give it a budget, record its duration (also when it raises)."""
        self.log(f"{name} (budget {budget_s:.0f} s)")
        started = time.monotonic()
        self._step_deadline = started + budget_s
        try:
            yield
        finally:
            took = time.monotonic() - started
            self.steps[name] = round(took, 2)
            self._step_deadline = None
            self.log(f"{name}: done in {took:.1f} s")
