"""Which replica holds which WebRTC call, so a hang-up the proxy routes elsewhere still ends the call.

Serve's proxy routes every HTTP request on its own: ``POST /v1/realtime/calls/<id>/hangup`` may land on a
replica that does not hold the call (the media, the slot and the session live where the offer was
answered). The replicas share one ``CallDirectory`` (hosted in the one-replica ``SessionTickets``
deployment, beside the tickets): the owner registers each call; a replica that gets a hang-up for a call
it does not hold asks the directory, which queues it for the owner; the owner, while it holds calls,
waits on ``next_hangups`` (a long poll) and ends them; the directory tells the asker once the call is gone.

The owner's poll is also its lease: a replica that has not polled for ``lease_s`` is presumed dead (killed
with its calls), and its calls are forgotten, so a hang-up for one is "unknown", not a wait. Each poll
carries the owner's current call ids, so a directory that restarted (and lost its table) is rebuilt.

Pure asyncio, no Ray: every method runs whole on one event loop (the deployment's), so a call is never
owned twice and a queued hang-up is never lost between the check and the wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum


class HangupResult(str, Enum):
    ENDED = "ended"  # the owner ended the call
    ASKED = "asked"  # the owner was asked, but has not confirmed within the wait
    UNKNOWN = "unknown"  # no live replica holds such a call


@dataclass
class _Owner:
    seen: float
    calls: set[str] = field(default_factory=set)
    asked: list[str] = field(default_factory=list)  # hang-ups waiting for the owner's next poll
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class CallDirectory:
    def __init__(self, lease_s: float = 30.0, max_calls: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_s = lease_s
        self.max_calls = max_calls
        self.clock = clock
        self._owners: dict[str, _Owner] = {}
        self._owner_of: dict[str, str] = {}
        self._ended: dict[str, asyncio.Event] = {}

    @property
    def calls(self) -> int:
        return len(self._owner_of)

    def register(self, call_id: str, replica: str) -> bool:
        """``replica`` holds ``call_id`` (False when the table is full: the call works, only a hang-up that
        lands elsewhere will not find it)."""
        owner = self._renew(replica)
        if call_id not in self._owner_of and len(self._owner_of) >= self.max_calls:
            return False
        previous = self._owner_of.get(call_id)
        if previous is not None and previous != replica:
            self._owners[previous].calls.discard(call_id)
        owner.calls.add(call_id)
        self._owner_of[call_id] = replica
        self._ended.setdefault(call_id, asyncio.Event())
        return True

    def forget(self, call_id: str) -> None:
        """The call ended (on its owner): a hang-up waiting for it is answered."""
        replica = self._owner_of.pop(call_id, None)
        if replica is not None and replica in self._owners:
            owner = self._owners[replica]
            owner.calls.discard(call_id)
            if call_id in owner.asked:
                owner.asked.remove(call_id)
        ended = self._ended.pop(call_id, None)
        if ended is not None:
            ended.set()

    async def hang_up(self, call_id: str, wait_s: float = 5.0) -> HangupResult:
        """Ask the call's owner to end it; wait up to ``wait_s`` for the end."""
        self._expire()
        replica = self._owner_of.get(call_id)
        if replica is None:
            return HangupResult.UNKNOWN
        owner = self._owners[replica]
        if call_id not in owner.asked:
            owner.asked.append(call_id)
        owner.wake.set()
        ended = self._ended[call_id]
        try:
            await asyncio.wait_for(ended.wait(), wait_s)
        except asyncio.TimeoutError:
            return HangupResult.ASKED
        return HangupResult.ENDED

    async def next_hangups(self, replica: str, holding: Iterable[str], wait_s: float = 10.0) -> list[str]:
        """The owner's long poll: the hang-ups asked for its calls (at once if some wait, else within
        ``wait_s``, maybe none). ``holding`` is what it holds now: the table is brought in line with it."""
        owner = self._renew(replica)
        holding = set(holding)
        for call_id in owner.calls - holding:
            self.forget(call_id)
        for call_id in holding - owner.calls:
            self.register(call_id, replica)
        if not owner.asked:
            owner.wake.clear()
            try:
                await asyncio.wait_for(owner.wake.wait(), wait_s)
            except asyncio.TimeoutError:
                pass
            owner.seen = self.clock()
        asked, owner.asked = owner.asked, []
        return asked

    def _renew(self, replica: str) -> _Owner:
        owner = self._owners.get(replica)
        if owner is None:
            owner = self._owners[replica] = _Owner(seen=self.clock())
        owner.seen = self.clock()
        return owner

    def _expire(self) -> None:
        """Forget the calls of replicas whose lease ran out (killed, or cut off from the directory)."""
        now = self.clock()
        for replica, owner in list(self._owners.items()):
            if now - owner.seen > self.lease_s:
                for call_id in list(owner.calls):
                    self.forget(call_id)
                del self._owners[replica]
