"""The chat messages of one knowledge question (pure): system prompt + persona, recent turns, the question.

Both backends take OpenAI-style messages; the tool loop appends the assistant's tool calls and the tools'
results to the same list (``answer_loop.py``).
"""

from __future__ import annotations

from typing import Any


def question_messages(system_prompt: str, question: str, context: list[dict] | None = None,
                      persona: str | None = None) -> list[dict[str, Any]]:
    """``context``: the session's recent turns (``{"role": "user"|"assistant", "content": str}``); anything
    else in it is dropped (it comes from the conversation memory, not from the client)."""
    system = system_prompt
    if persona:
        system += f" You speak as this persona: {persona}"
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for turn in context or []:
        if turn.get("role") in ("user", "assistant") and isinstance(turn.get("content"), str):
            messages.append({"role": turn["role"], "content": turn["content"]})
    messages.append({"role": "user", "content": question})
    return messages
