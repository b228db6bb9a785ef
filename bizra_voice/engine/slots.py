"""Which session holds which batch row (pure; thread-safe)."""

from __future__ import annotations

import threading

from bizra_voice.engine.api import AtCapacity


class SlotTable:
    """Hands out batch rows; the lowest free row first so a lightly loaded engine keeps rows compact."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._owner: list[str | None] = [None] * size
        self._lock = threading.Lock()

    def acquire(self, owner: str) -> int:
        with self._lock:
            for index, current in enumerate(self._owner):
                if current is None:
                    self._owner[index] = owner
                    return index
        raise AtCapacity(f"All {self.size} session slots are in use; try again shortly.")

    def release(self, index: int, owner: str) -> bool:
        with self._lock:
            if self._owner[index] != owner:
                return False
            self._owner[index] = None
            return True

    def owner(self, index: int) -> str | None:
        return self._owner[index]

    @property
    def used(self) -> int:
        with self._lock:
            return sum(owner is not None for owner in self._owner)

    @property
    def free(self) -> int:
        return self.size - self.used
