"""Session tickets: a validated session request stored under a short-lived, single-use id (pure).

``POST /api/sessions`` stores the request (persona, voice, sampling, ...) here and answers the id; the
WebSocket then presents only ``?session=<id>``, so the URL stays short whatever the persona, and a
browser need not put the long-lived access token in it. One store serves every VoiceServer replica (it
lives in the ``SessionTickets`` deployment, ``serve/tickets.py``): the POST and the WebSocket are routed
independently and may land on different replicas.

- **Single use**: :meth:`TicketStore.consume` marks the ticket used whatever the outcome; the store is
  driven from one event loop, so two consumers cannot both get it.
- **Short-lived**: a ticket expires ``ttl_s`` after it was made. Used and expired tickets are remembered
  for ``remember_s`` more, so a late or repeated use is told *why* (expired / already used) rather than
  "unknown"; after that they are swept.
- **Tied to the access token**: the ticket records a tag of the token the server held when it was made
  (``AccessPolicy.token_tag``); a server holding another token (rotated) refuses it.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

TICKET_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
CREATE_HINT = "create a new one with POST /api/sessions"
REMEMBERED_PER_PENDING = 4  # spent tickets remembered (to say "used"/"expired") per pending one allowed


class Refusal(str, Enum):
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    USED = "used"
    WRONG_TOKEN = "wrong_token"


class TicketRefused(ValueError):
    """The ticket cannot open a session; ``str(exc)`` is one sentence for the client (0x05, close 1008)."""

    def __init__(self, message: str, reason: Refusal) -> None:
        super().__init__(message)
        self.reason = reason


class StoreFull(RuntimeError):
    """Too many unused tickets are waiting (HTTP 429): ``str(exc)`` says how many."""


@dataclass
class _Entry:
    params: dict[str, Any] | None  # None once used or found expired
    token_tag: str | None
    expires_at: float
    used_at: float | None = None


class TicketStore:
    def __init__(self, ttl_s: float, max_pending: int, *, remember_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic,
                 new_id: Callable[[], str] = lambda: secrets.token_urlsafe(24)) -> None:
        self.ttl_s = float(ttl_s)
        self.max_pending = int(max_pending)
        self.remember_s = float(remember_s)
        self._clock = clock
        self._new_id = new_id
        self._entries: dict[str, _Entry] = {}  # insertion order = creation order (the sweep relies on it)

    @property
    def pending(self) -> int:
        now = self._clock()
        return sum(1 for e in self._entries.values() if e.used_at is None and e.expires_at > now)

    def create(self, params: dict[str, Any], token_tag: str | None) -> tuple[str, float]:
        """Store ``params`` (already validated); return the new ticket id and its lifetime in seconds."""
        self.sweep()
        if self.pending >= self.max_pending:
            raise StoreFull(f"{self.pending} session tickets are waiting to be used, the most this server "
                            f"keeps; use or let them expire ({self.ttl_s:g} s) and try again.")
        ticket_id = self._new_id()
        self._entries[ticket_id] = _Entry(dict(params), token_tag, self._clock() + self.ttl_s)
        return ticket_id, self.ttl_s

    def consume(self, ticket_id: str, token_tag: str | None) -> dict[str, Any]:
        """The stored request, once; every later use, a late one or one under another token is refused."""
        self.sweep()
        now = self._clock()
        entry = self._entries.get(ticket_id) if TICKET_ID.match(ticket_id or "") else None
        if entry is None:
            raise TicketRefused(f"Session ticket is unknown (never issued, or forgotten {self.remember_s:g} s "
                                f"after it expired); {CREATE_HINT} and connect with its url.", Refusal.UNKNOWN)
        if entry.used_at is not None:
            raise TicketRefused(f"Session ticket was already used {now - entry.used_at:.0f} s ago (each ticket "
                                f"opens one session); {CREATE_HINT}.", Refusal.USED)
        if now >= entry.expires_at:
            entry.params = None  # it can never be used now
            raise TicketRefused(f"Session ticket expired {now - entry.expires_at:.0f} s ago (tickets are valid "
                                f"for {self.ttl_s:g} s); {CREATE_HINT}.", Refusal.EXPIRED)
        params, entry.params, entry.used_at = entry.params, None, now
        if not _same_tag(entry.token_tag, token_tag):
            raise TicketRefused("Session ticket was issued under a different access token (the token has "
                                f"changed since); {CREATE_HINT}.", Refusal.WRONG_TOKEN)
        return params

    def sweep(self) -> int:
        """Forget tickets expired (or used) more than ``remember_s`` ago, and the oldest spent ones beyond
        ``REMEMBERED_PER_PENDING`` x ``max_pending`` (memory stays bounded); return how many went."""
        now = self._clock()
        forgotten = {k for k, e in self._entries.items()
                     if max(e.expires_at, e.used_at or 0.0) + self.remember_s <= now}
        spent = [k for k, e in self._entries.items()
                 if k not in forgotten and (e.used_at is not None or e.expires_at <= now)]
        excess = len(self._entries) - len(forgotten) - REMEMBERED_PER_PENDING * self.max_pending
        gone = [*forgotten, *spent[:max(0, excess)]]
        for key in gone:
            del self._entries[key]
        return len(gone)


def _same_tag(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return hmac.compare_digest(a, b)
