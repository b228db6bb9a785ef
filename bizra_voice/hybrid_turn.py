"""The state of one hybrid-mode user turn and the shapes of the calls the controller makes (pure).

``HybridController`` (bizra_voice/hybrid.py) reaches the router, Qwen and the Transcriber only through
these async callables, so it runs — and is tested — without Ray; Serve handle calls are plugged in by
bizra_voice/serve/hybrid_wiring.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RouteFn = Callable[[str, str, "str | None", bool], Awaitable[dict]]  # (requested, text, previous route, typed)
# (question, context, persona, **options) -> text pieces, and tool.call / tool.result / client_tool.calls /
# knowledge.failed events (dicts); options: client_tools, tool_choice, resume (the Realtime client's functions)
AnswerFn = Callable[..., AsyncIterator["str | dict"]]
TranscribeFn = Callable[[np.ndarray, int], Awaitable[dict]]  # (pcm, sample rate) -> {"text", "ms", ...}
EmitFn = Callable[[dict], Awaitable[None]]  # one event to the client


@dataclass
class TurnState:
    """One user turn, from its text to the end of the spoken answer (or its cancellation)."""

    turn_id: int
    text: str
    source: str  # "speech" | "typed"
    t_end: float  # end of the user turn (detected, or the typed message's arrival)
    timings: dict[str, float] = field(default_factory=dict)
    guidance: Any = None  # the answer's EngineGuidance once the knowledge model's first piece arrived
    total_tokens: int = 0  # answer tokens handed to the engine so far
    guided_frames: int = 0  # frames the engine spoke from the answer so far
    answer_done: bool = False
    t_first_piece: float | None = None
    finished: bool = False  # guidance.ended was sent


NO_OUTPUT = "error: the client sent no output for this call"


@dataclass
class PausedAnswer:
    """An answer waiting for a client's function outputs: the conversation the model had, and its calls."""

    turn_id: int
    messages: list[dict]  # system, question, ..., the assistant's tool calls and the server tools' results
    calls: list[dict]  # {"call_id", "name", "arguments"} the client runs

    @property
    def call_ids(self) -> list[str]:
        return [call["call_id"] for call in self.calls]

    def resumed_with(self, outputs: dict[str, str]) -> list[dict]:
        """The messages to go on from: one ``tool`` message per client call, in the order the model made them
        (a call the client did not answer says so, so the model is never left with an unanswered call)."""
        return [*self.messages, *({"role": "tool", "tool_call_id": call["call_id"], "name": call["name"],
                                   "content": outputs.get(call["call_id"], NO_OUTPUT)} for call in self.calls)]
