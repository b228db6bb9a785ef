"""Is the gateway up? A small clocked state machine (pure): probes and real answers report to it.

Up, a probe runs every ``interval_s``; down, the next probe waits 1 s, then 2, 4, … up to ``backoff_max_s``,
so a dead gateway is not hammered and a revived one is found again within that bound. A failed answer counts
like a failed probe (the next turn already sees it); ``verified`` says whether a completion has succeeded
since the last failure — needed because some gateways' ``GET /v1/models`` is not usable (``transformers
serve``'s answered 500 here): an HTTP error there proves the server is reachable, not that it answers, so
the probe then spends one token on a completion, once per recovery.
"""

from __future__ import annotations

import time
from collections.abc import Callable

NOT_PROBED = "not probed yet"


class GatewayHealth:
    def __init__(self, interval_s: float = 5.0, backoff_max_s: float = 30.0, backoff_min_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.backoff_max_s = max(backoff_min_s, backoff_max_s)
        self.backoff_min_s = backoff_min_s
        self.clock = clock
        self.up = False
        self.detail = NOT_PROBED
        self.verified = False
        self.failures = 0  # consecutive
        self.next_probe_at = clock()

    def answered(self) -> None:
        """A completion (a probe's or a real one) succeeded."""
        self.up, self.verified, self.failures, self.detail = True, True, 0, ""
        self.next_probe_at = self.clock() + self.interval_s

    def listed(self) -> None:
        """A cheap probe succeeded (``GET /v1/models`` answered 2xx, or answered at all while ``verified``)."""
        self.up, self.failures, self.detail = True, 0, ""
        self.next_probe_at = self.clock() + self.interval_s

    def failed(self, why: str) -> None:
        self.up, self.verified, self.detail = False, False, why
        self.failures += 1
        backoff = self.backoff_min_s * 2 ** min(self.failures - 1, 16)
        self.next_probe_at = self.clock() + min(self.backoff_max_s, backoff)

    def wait_s(self) -> float:
        """Seconds until the next probe is due."""
        return max(0.0, self.next_probe_at - self.clock())
