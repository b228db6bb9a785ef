"""One knowledge answer's guidance on one live engine session, extendable while it is being spoken.

The answer arrives in pieces, but the engine holds one guidance buffer per slot and speaks it token by
token. Appending must neither drop nor repeat a token, so every change after the first is one job on the
engine's tick thread (between two ticks): read how far the engine got, then re-queue "the unsaid rest +
the new tokens". A cancel (barge-in, client cancel, a newer turn) reads the progress the same way, so the
caller learns how many answer tokens were actually said.
"""

from __future__ import annotations

import asyncio
from typing import Any

MAX_GUIDE_TOKENS = 512  # the engine's guidance buffer (engine.batched.MAX_GUIDE_TOKENS)


class EngineGuidance:
    """One answer's guidance on one live session, extendable while it is being spoken.

    ``live`` is a ``LiveSession``: the first words go through ``live.guide``; later words are appended by
    one job on the tick thread that reads the progress and re-queues the unsaid rest plus the new tokens
    (set + progress happen between two ticks, so no token is dropped or repeated).
    """

    def __init__(self, live: Any, max_tokens: int = MAX_GUIDE_TOKENS) -> None:
        self.live = live
        self.max_tokens = max_tokens
        self.tokens: list[int] = []
        self.base = 0  # index in ``tokens`` where the engine's current guidance starts
        self.started = False
        self.cancelled = False
        self._lock = asyncio.Lock()

    def _extend_on_tick_thread(self) -> int:
        if self.cancelled:
            return 0
        engine, slot = self.live.runtime.engine, self.live.slot
        said, _queued = engine.guidance_progress(slot)
        pos = self.base + said
        rest = self.tokens[pos:pos + self.max_tokens]
        if not rest:
            return 0
        self.base = pos
        return engine.set_guidance(slot, rest)

    def _cancel_on_tick_thread(self) -> int:
        if self.cancelled:
            return self.base
        self.cancelled = True
        if not self.started:
            return 0
        engine, slot = self.live.runtime.engine, self.live.slot
        said, _queued = engine.guidance_progress(slot)
        engine.cancel_guidance(slot)
        return self.base + said

    async def extend(self, tokens: list[int]) -> int:
        """Append ``tokens`` to what is being spoken; returns how many the engine queued."""
        if not tokens or self.cancelled or self.live.closed:
            return 0
        async with self._lock:
            self.tokens.extend(tokens)
            if not self.started:
                self.started = True
                return await self.live.guide(self.tokens[: self.max_tokens])
            return await asyncio.wrap_future(self.live.runtime._submit(self._extend_on_tick_thread))

    async def cancel(self) -> int:
        """Stop speaking; returns how many answer tokens were said before the cancel."""
        async with self._lock:
            if self.live.closed:
                self.cancelled = True
                return 0
            return await asyncio.wrap_future(self.live.runtime._submit(self._cancel_on_tick_thread))
