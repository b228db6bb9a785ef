"""A tool call the model made, what came back, and how both are shown to the client (pure).

The model writes a call's arguments as JSON text; an MCP server takes a JSON object. Anything that goes
wrong — arguments that are not an object, a tool not on the allow-list, a timeout, an error inside the
tool — becomes a result with ``ok: False`` that the model reads (so it can say it could not look it up),
never an exception out of the answer. Results are cut to a size the model's context can hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

EVENT_PREVIEW_CHARS = 500  # of a result, in the client's tool.result event (the model gets up to max_result_chars)


@dataclass(frozen=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str  # JSON text, as the model wrote it

    def parsed_arguments(self) -> dict[str, Any] | None:
        """The arguments as an object, or None when they are not a JSON object."""
        if not self.arguments.strip():
            return {}
        try:
            value = json.loads(self.arguments)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def shown_arguments(self) -> Any:
        """For events: the object when it parses, else the text as written."""
        parsed = self.parsed_arguments()
        return parsed if parsed is not None else self.arguments


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    text: str  # what the model reads (for an error: what went wrong)
    ms: float
    error: str | None = None  # set when ok is False
    cut: bool = False  # the text was cut to the size limit

    @classmethod
    def failed(cls, error: str, ms: float = 0.0) -> ToolResult:
        return cls(False, f"error: {error}", ms, error)

    def for_model(self) -> str:
        return self.text


def cut_to(text: str, max_chars: int) -> tuple[str, bool]:
    """``text`` within ``max_chars``, with a note of how much was left out."""
    if len(text) <= max_chars:
        return text, False
    note = f" … [cut: {len(text) - max_chars} more characters]"
    return text[: max(0, max_chars - len(note))] + note, True


def call_event(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool.call", "call_id": call.call_id, "name": call.name, "arguments": call.shown_arguments()}


def result_event(call: ToolCall, result: ToolResult) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "tool.result", "call_id": call.call_id, "name": call.name, "ok": result.ok,
                             "ms": round(result.ms, 1)}
    if result.ok:
        event["result"] = cut_to(result.text, EVENT_PREVIEW_CHARS)[0]
        if result.cut:
            event["cut"] = True
    else:
        event["error"] = result.error
    return event


class Toolset(Protocol):
    """What the answer loop needs of the tools: their schemas for the model, and a call that never raises."""

    def schemas(self) -> list[dict[str, Any]]: ...

    async def call(self, call: ToolCall) -> ToolResult: ...
