"""One knowledge answer with tools: model turn -> tool calls run -> results back -> ... -> the answer (pure).

``answer_events`` yields what the caller passes on: text pieces (``str``, spoken as they come, including
anything the model says before it calls a tool, such as "let me check") and, around each call, a
``tool.call`` and a ``tool.result`` event (``tools/calls.py``). The model is offered the tools until the
answer has made ``max_calls`` calls; after that it must answer with what it has. A backend is any
``stream(messages, tools)`` that yields text pieces and, at the end of its turn, ``ToolCall``s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from bizra_voice.knowledge.tools.calls import ToolCall, Toolset, call_event, result_event

ModelStream = Callable[[list[dict], list[dict]], AsyncIterator["str | ToolCall"]]


def assistant_calls_message(text: str, calls: list[ToolCall]) -> dict[str, Any]:
    """The assistant's turn that made ``calls`` (Chat Completions shape; the local backend adapts it)."""
    return {"role": "assistant", "content": text or None,
            "tool_calls": [{"id": c.call_id, "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments}} for c in calls]}


async def answer_events(model: ModelStream, messages: list[dict], toolset: Toolset | None,
                        max_calls: int = 3) -> AsyncIterator[str | dict]:
    """Text pieces and tool events of one answer; ``messages`` grows with the calls and their results."""
    made = 0
    while True:
        tools = toolset.schemas() if toolset is not None and made < max_calls else []
        text, calls = "", []
        async for item in model(messages, tools):
            if isinstance(item, ToolCall):
                calls.append(item)
            elif item:
                text += item
                yield item
        if not calls or not tools:  # the answer is complete (calls with no tools offered are not run)
            return
        calls = calls[: max_calls - made]
        messages.append(assistant_calls_message(text, calls))
        for call in calls:
            made += 1
            yield call_event(call)
            result = await toolset.call(call)
            yield result_event(call, result)
            messages.append({"role": "tool", "tool_call_id": call.call_id, "name": call.name,
                             "content": result.for_model()})
