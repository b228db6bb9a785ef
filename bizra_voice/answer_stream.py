"""Reading one knowledge answer's stream under its bounds (pure): what hybrid mode waits for, and how long.

The stream (the knowledge deployment's ``answer``) yields text pieces and events. ``AnswerReader`` gives
the controller (bizra_voice/hybrid.py) its first piece, then the next ones, and stops the model when a
bound passes:

- the first piece: ``deadline_ms`` per step, the tool's timeout + ``deadline_ms`` while a server tool
  works, ``answer_timeout_s`` for all of it; nothing in time -> ``NoAnswer`` (why), the turn stays
  standalone;
- then the whole answer may stream for ``answer_timeout_s``; a failure mid-answer ends it with what it said
  (``next`` returns why it was cut);
- ``tool.call`` / ``tool.result`` events are handed to ``on_tool_event`` on the way; ``knowledge.failed`` is
  the deployment's reason; ``client_tool.calls`` (a Realtime client's function) ends the reading: before
  any text it raises ``Paused``, after some it is kept in ``paused``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


class NoAnswer(Exception):
    """No first piece of the answer: the turn falls back to standalone; ``str()`` is why."""


class Paused(Exception):
    """The answer's first step is a call of the client's functions (``item``: the ``client_tool.calls``)."""

    def __init__(self, item: dict) -> None:
        super().__init__(item.get("calls"))
        self.item = item


@dataclass(frozen=True)
class AnswerBounds:
    knowledge: str  # names the model in reasons: "the knowledge model (Qwen)"
    deadline_ms: float  # per step, until the first piece
    tool_timeout_s: float  # a server tool's call_timeout_s
    answer_timeout_s: float  # the whole answer


class AnswerReader:
    def __init__(self, stream: Any, bounds: AnswerBounds, on_tool_event: Callable[[dict], Awaitable[None]],
                 clock: Callable[[], float]) -> None:
        self.stream = stream
        self.iterator = stream.__aiter__()
        self.bounds = bounds
        self.on_tool_event = on_tool_event
        self.clock = clock
        self.started = clock()
        self.paused: dict | None = None  # the client_tool.calls that ended a started answer
        self._deadline: float | None = None  # the whole answer's, once its first piece came

    def cancel(self) -> None:
        """Stop the model (a barge-in, a client cancel, a newer turn, a bound passed)."""
        cancel = getattr(self.stream, "cancel", None)
        if callable(cancel):
            with contextlib.suppress(Exception):  # already finished
                cancel()

    async def first(self) -> str:
        """The answer's first text piece. Raises ``NoAnswer`` (why) or ``Paused``."""
        b = self.bounds
        tool: str | None = None  # the tool whose result is awaited
        latest = self.started + b.answer_timeout_s
        while True:
            step = b.deadline_ms / 1000.0 + (b.tool_timeout_s if tool is not None else 0.0)
            overall = latest - self.clock() < step
            try:
                left = max(0.001, min(step, latest - self.clock()))
                item = await asyncio.wait_for(self.iterator.__anext__(), timeout=left)
            except asyncio.TimeoutError:
                self.cancel()
                if overall:
                    raise NoAnswer(f"{b.knowledge} gave no answer within {b.answer_timeout_s:g} s") from None
                if tool is not None:
                    raise NoAnswer(f"the tool {tool!r} gave no result within {b.tool_timeout_s:g} s") from None
                raise NoAnswer(f"{b.knowledge} gave no first token within the {b.deadline_ms:.0f} ms "
                               "deadline") from None
            except StopAsyncIteration:
                raise NoAnswer(f"{b.knowledge} returned an empty answer") from None
            except asyncio.CancelledError:  # superseded or cancelled before the first piece: the model stops too
                self.cancel()
                raise
            except Exception as exc:
                self.cancel()
                raise NoAnswer(f"{b.knowledge} failed ({type(exc).__name__})") from None
            if isinstance(item, str):
                self._deadline = self.clock() + b.answer_timeout_s
                return item
            if item.get("type") == "knowledge.failed":
                raise NoAnswer(f"{b.knowledge} failed ({item.get('reason')})")
            if item.get("type") == "client_tool.calls":
                raise Paused(item)
            tool = item.get("name") if item.get("type") == "tool.call" else None
            await self.on_tool_event(item)

    async def next(self) -> tuple[str | None, str | None]:
        """The next text piece (None at the end) and, when the model was stopped early, why."""
        b = self.bounds
        assert self._deadline is not None, "first() comes first"
        while True:
            try:
                item = await asyncio.wait_for(self.iterator.__anext__(),
                                              timeout=max(0.001, self._deadline - self.clock()))
            except StopAsyncIteration:
                return None, None
            except asyncio.TimeoutError:
                self.cancel()
                return None, f"{b.knowledge} was still answering after {b.answer_timeout_s:g} s; the answer ends there"
            except Exception as exc:  # a failing replica must not leave the turn unfinished
                self.cancel()
                return None, f"{b.knowledge} failed mid-answer ({type(exc).__name__}); the answer ends there"
            if isinstance(item, str):
                return item, None
            if item.get("type") == "knowledge.failed":
                return None, f"{b.knowledge} failed mid-answer ({item.get('reason')}); the answer ends there"
            if item.get("type") == "client_tool.calls":
                self.paused = item
                return None, None
            await self.on_tool_event(item)
