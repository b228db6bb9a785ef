"""A SCRIPTED OpenAI-compatible server for the tests of tool-call handling (a stand-in at a network boundary).

Random weights never emit a tool call, so the tests that need a model which calls tools talk to this:
a real HTTP server (Starlette on uvicorn, in a thread of the test process) that speaks the Chat
Completions streaming protocol (``data:`` chunks with ``delta.content`` / ``delta.tool_calls``, then
``data: [DONE]``) and answers by a script the test sets. It records every request, so a test can check
what the knowledge model was sent (the tools offered, the tool results). The model path itself is tested
against a real server, ``transformers serve`` (tests/test_knowledge_gateway.py).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests._ports import free_port


@dataclass
class Reply:
    """One completion: text pieces, then tool calls ``(name, arguments dict)``; ``delay_s`` before the first."""

    pieces: list[str] = field(default_factory=list)
    calls: list[tuple[str, dict]] = field(default_factory=list)
    delay_s: float = 0.0


Script = Callable[[list[dict], list[dict]], Reply]  # (messages, tools) -> the reply


def last_tool_result(messages: list[dict]) -> str | None:
    return messages[-1]["content"] if messages and messages[-1].get("role") == "tool" else None


class ScriptedGateway:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[dict] = []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _app(self):
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route

        async def models(_request):
            return JSONResponse({"object": "list", "data": [{"id": "scripted", "object": "model", "owned_by": "test"}]})

        async def completions(request):
            body = await request.json()
            self.requests.append(body)
            if not body.get("stream"):  # a health probe's one-token completion: not part of the script
                return JSONResponse(_whole(Reply(["pong"])))
            reply = self.script(body.get("messages", []), body.get("tools") or [])
            return StreamingResponse(_chunks(reply), media_type="text/event-stream")

        return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", completions,
                                                                    methods=["POST"])])

    def __enter__(self) -> ScriptedGateway:
        import uvicorn

        config = uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline and self._thread.is_alive(), "the scripted gateway did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def completions(self) -> list[dict]:
        """Requests that were completions of the conversation (not the health probe's one-token ping)."""
        return [r for r in self.requests if r.get("stream")]


def _chunk(delta: dict, finish: str | None = None) -> str:
    body = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": "scripted", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n"


async def _chunks(reply: Reply):
    await asyncio.sleep(reply.delay_s)
    yield _chunk({"role": "assistant", "content": ""})
    for piece in reply.pieces:
        yield _chunk({"content": piece})
        await asyncio.sleep(0.01)
    for index, (name, arguments) in enumerate(reply.calls):
        text = json.dumps(arguments)
        half = len(text) // 2  # the arguments arrive in two fragments, as real gateways send them
        yield _chunk({"tool_calls": [{"index": index, "id": f"call_{index}_{name}", "type": "function",
                                      "function": {"name": name, "arguments": text[:half]}}]})
        yield _chunk({"tool_calls": [{"index": index, "function": {"arguments": text[half:]}}]})
    yield _chunk({}, "tool_calls" if reply.calls else "stop")
    yield "data: [DONE]\n\n"


def _whole(reply: Reply) -> dict:
    return {"id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()), "model": "scripted",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "".join(reply.pieces)}}]}
