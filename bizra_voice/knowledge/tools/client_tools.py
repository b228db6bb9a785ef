"""The tools one answer may use: the replica's MCP tools plus the functions a Realtime client declared.

A client's function (``session.update`` ``tools`` on ``/v1/realtime``) is run by the client, not here: when
the model calls one, the answer pauses (``answer_loop.py`` yields ``client_tool.calls`` with the messages so
far) and goes on only when the client sends the output and asks for the next response. A client function
named like a server tool is the client's in that session: the name the client declared is the one it
expects to be called. A name on neither list is a call of an unknown tool, answered to the model as an
error (the MCP toolbox's allow-list check).
"""

from __future__ import annotations

from typing import Any

from bizra_voice.knowledge.tools.calls import ToolCall, ToolResult, Toolset


def function_name(schema: dict[str, Any]) -> str:
    """The name of a Chat Completions tool schema (``{"type": "function", "function": {"name": ...}}``)."""
    return str((schema.get("function") or {}).get("name", ""))


class SessionToolset:
    """``Toolset`` of one answer: ``server`` (may be None) for what runs here, ``client`` schemas for the rest."""

    def __init__(self, server: Toolset | None, client: list[dict[str, Any]] | None = None) -> None:
        self.server = server
        self.client = list(client or [])
        self.client_names = {function_name(schema) for schema in self.client}

    def schemas(self) -> list[dict[str, Any]]:
        served = [s for s in (self.server.schemas() if self.server is not None else [])
                  if function_name(s) not in self.client_names]
        return served + self.client

    def is_client(self, name: str) -> bool:
        return name in self.client_names

    async def call(self, call: ToolCall) -> ToolResult:
        if self.server is None:
            return ToolResult.failed(f"no tool named {call.name!r} is offered here")
        return await self.server.call(call)


def with_client_tools(server: Toolset | None, client: list[dict[str, Any]] | None) -> Toolset | None:
    """The toolset for an answer: the server's alone when the client declared nothing."""
    return SessionToolset(server, client) if client else server
