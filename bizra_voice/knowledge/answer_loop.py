"""One knowledge answer with tools: model turn -> tool calls run -> results back -> ... -> the answer (pure).

``answer_events`` yields what the caller passes on: text pieces (``str``, spoken as they come, including
anything the model says before it calls a tool, such as "let me check") and, around each call, a
``tool.call`` and a ``tool.result`` event (``tools/calls.py``). The model is offered the tools until the
answer has made ``max_calls`` calls (counted since the question, so an answer resumed after a client's
function output keeps its count); after that it must answer with what it has. A backend is any
``stream(messages, tools)`` that yields text pieces and, at the end of its turn, ``ToolCall``s.

**A client's function pauses the answer.** When the model calls a function the client declared
(``tools/client_tools.py``), the server's calls of that turn are run, then the last item is
``{"type": "client_tool.calls", "calls": [...], "messages": [...]}``: the conversation so far, to be
resumed - with a ``tool`` message per client call appended - by a new answer once the client has answered.
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


def calls_since_question(messages: list[dict]) -> int:
    """Tool calls already made for the latest user message (a resumed answer's earlier rounds)."""
    made = 0
    for message in reversed(messages):
        if message.get("role") == "user":
            break
        if message.get("role") == "assistant":
            made += len(message.get("tool_calls") or [])
    return made


async def answer_events(model: ModelStream, messages: list[dict], toolset: Toolset | None,
                        max_calls: int = 3) -> AsyncIterator[str | dict]:
    """Text pieces and tool events of one answer; ``messages`` grows with the calls and their results."""
    made = calls_since_question(messages)
    is_client = getattr(toolset, "is_client", lambda _name: False)
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
        for_client = [call for call in calls if is_client(call.name)]
        made += len(for_client)
        for call in calls:
            if is_client(call.name):
                continue
            made += 1
            yield call_event(call)
            result = await toolset.call(call)
            yield result_event(call, result)
            messages.append({"role": "tool", "tool_call_id": call.call_id, "name": call.name,
                             "content": result.for_model()})
        if for_client:  # the client runs these: the answer waits for it (resumed with these messages)
            yield {"type": "client_tool.calls", "messages": messages,
                   "calls": [{"call_id": c.call_id, "name": c.name, "arguments": c.arguments} for c in for_client]}
            return
