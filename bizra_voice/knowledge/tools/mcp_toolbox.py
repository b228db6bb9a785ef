"""The MCP servers of one knowledge replica, reached with the official ``mcp`` SDK (``mcp.Client``).

One session per configured server, opened when the replica starts and kept for its life: a stdio server
(``command``/``args``) is a child process of the replica; a streamable-HTTP server (``url``) is a
connection. The SDK's sessions live in anyio task groups that must be entered and left by one task, so
each session is held open by its own task (``_Link``); calls are made from the answers' tasks.

Only tools on ``tools.allow`` are offered to the model or run; a call is bounded by ``call_timeout_s`` and
its result cut to ``max_result_chars``; every failure (not allowed, unknown, bad arguments, timeout, the
tool's own error, a server gone) is a ``ToolResult`` with ``ok: False`` for the model, never an exception.
A server that fails to start or goes away is tried again in the background, backing off from 1 s to 30 s;
its tools are not offered meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from bizra_voice.knowledge.config import McpServerConfig, ToolsConfig
from bizra_voice.knowledge.tools.calls import ToolCall, ToolResult, cut_to

log = logging.getLogger("ray.serve")

RETRY_MIN_S, RETRY_MAX_S = 1.0, 30.0


def openai_schema(tool: Any) -> dict[str, Any]:
    """An MCP ``Tool`` as a Chat Completions function tool (what Qwen2.5's template and gateways take)."""
    parameters = dict(tool.input_schema or {"type": "object", "properties": {}})
    parameters.pop("title", None)  # pydantic's model title ("get_timeArguments") is noise for the model
    return {"type": "function", "function": {"name": tool.name, "description": tool.description or "",
                                             "parameters": parameters}}


def result_text(result: Any) -> str:
    """The text of an MCP ``CallToolResult``: its text blocks, else its structured content as JSON."""
    texts = [block.text for block in result.content if getattr(block, "type", None) == "text"]
    others = [f"[{block.type} content]" for block in result.content if getattr(block, "type", None) != "text"]
    if texts or others:
        return "\n".join(texts + others)
    if result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return ""


class _Link:
    """One MCP server's session, held open by its own task."""

    def __init__(self, config: McpServerConfig) -> None:
        self.config = config
        self.client: Any = None
        self.tools: list[Any] = []
        self.error: str | None = "not started"
        self.failures = 0
        self.retry_at = 0.0
        self._task: asyncio.Task | None = None
        self._stop: asyncio.Event | None = None

    @property
    def transport(self) -> str:
        return "stdio" if self.config.command else "streamable-http"

    @property
    def alive(self) -> bool:
        return self.client is not None and self._task is not None and not self._task.done()

    def _target(self) -> Any:
        from mcp import StdioServerParameters

        cfg = self.config
        if cfg.command:
            return StdioServerParameters(command=cfg.command, args=list(cfg.args), env=dict(cfg.env) or None,
                                         cwd=cfg.cwd)
        if cfg.bearer_token_env and os.environ.get(cfg.bearer_token_env):
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {os.environ[cfg.bearer_token_env]}"})
            return streamable_http_client(cfg.url, http_client=http)
        return cfg.url

    async def connect(self, timeout_s: float) -> None:
        """Open the session and list its tools; on failure ``error`` says why (nothing raised)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future = loop.create_future()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._hold(ready, self._stop))
        try:
            await asyncio.wait_for(asyncio.shield(ready), timeout=timeout_s)
        except asyncio.TimeoutError:
            self._failed(f"did not start within {timeout_s:g} s")
            await self.close()
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}"[:300])
            await self.close()
        else:
            self.error, self.failures = None, 0

    def _failed(self, why: str) -> None:
        self.error = why
        self.failures += 1
        self.retry_at = time.monotonic() + min(RETRY_MAX_S, RETRY_MIN_S * 2 ** min(self.failures - 1, 8))

    async def _hold(self, ready: asyncio.Future, stop: asyncio.Event) -> None:
        from mcp import Client

        try:
            async with Client(self._target()) as client:
                tools, cursor = [], None
                while True:
                    page = await client.list_tools(cursor=cursor)
                    tools += page.tools
                    cursor = page.next_cursor
                    if not cursor:
                        break
                self.tools, self.client = tools, client
                if not ready.done():
                    ready.set_result(None)
                await stop.wait()
        except BaseException as exc:  # a server that never started, or went away
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else ConnectionError("cancelled"))
            elif not stop.is_set():
                self._failed(f"the session ended ({type(exc).__name__})")
                log.warning("MCP server %s went away: %s", self.config.name, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self.client = None

    def broken(self, why: str) -> None:
        """A call failed in a way that says the session is gone: drop it, reconnect later."""
        self._failed(why)
        if self._stop is not None:
            self._stop.set()

    async def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        task, self._task = self._task, None
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(task, timeout=5.0)
            except BaseException:  # it would not stop in time: cancel it
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self.client = None


class McpToolbox:
    """The allowed tools of the configured MCP servers: ``schemas()`` for the model, ``call()`` to run one."""

    def __init__(self, config: ToolsConfig, clock: Callable[[], float] = time.perf_counter) -> None:
        self.config = config
        self.clock = clock
        self.links = [_Link(server) for server in config.mcp]
        self.calls = 0  # tool calls run (tests check that standalone sessions never make one)
        self._index: dict[str, tuple[_Link, Any]] = {}
        self._reconnecting: dict[str, asyncio.Task] = {}  # server name -> its reconnect

    async def start(self) -> None:
        """Connect every server (concurrently, each bounded by ``connect_timeout_s``) and index the tools."""
        await asyncio.gather(*(link.connect(self.config.connect_timeout_s) for link in self.links))
        for link in self.links:
            if link.error:
                log.warning("MCP server %s (%s) is not available: %s; retrying in the background",
                            link.config.name, link.transport, link.error)
        self._reindex(announce=True)

    def _reindex(self, announce: bool = False) -> None:
        allowed = set(self.config.allow)
        index: dict[str, tuple[_Link, Any]] = {}
        for link in self.links:
            if not link.alive:
                continue
            offered, withheld = [], []
            for tool in link.tools:
                if tool.name not in allowed:
                    withheld.append(tool.name)
                elif tool.name in index:
                    log.warning("MCP server %s also offers %r; the one of %s is used", link.config.name,
                                tool.name, index[tool.name][0].config.name)
                else:
                    index[tool.name] = (link, tool)
                    offered.append(tool.name)
            if announce:
                log.info("MCP server %s (%s): tools %s offered to the knowledge model%s", link.config.name,
                         link.transport, offered or "none",
                         f"; not on tools.allow: {withheld}" if withheld else "")
        missing = sorted(allowed - set(index))
        if announce and missing:
            log.warning("tools.allow names %s, which no connected MCP server offers", missing)
        self._index = index

    def refresh(self) -> None:
        """Reconnect, in the background, servers that are down and due for a retry (never waits)."""
        now = time.monotonic()
        for link in self.links:
            name = link.config.name
            if link.alive or name in self._reconnecting or now < link.retry_at:
                continue
            task = asyncio.ensure_future(self._reconnect(link))
            self._reconnecting[name] = task
            task.add_done_callback(lambda _t, name=name: self._reconnecting.pop(name, None))

    async def _reconnect(self, link: _Link) -> None:
        await link.close()
        await link.connect(self.config.connect_timeout_s)
        if link.alive:
            log.info("MCP server %s is back", link.config.name)
        self._reindex()

    def schemas(self) -> list[dict[str, Any]]:
        self.refresh()
        return [openai_schema(tool) for link, tool in self._index.values() if link.alive]

    async def call(self, call: ToolCall) -> ToolResult:
        started = self.clock()

        def ms() -> float:
            return (self.clock() - started) * 1000.0

        if not call.name:
            return ToolResult.failed(f"the tool call is not valid JSON: {call.arguments[:120]!r}")
        if call.name not in self.config.allow:
            return ToolResult.failed(f"the tool {call.name!r} is not available")
        entry = self._index.get(call.name)
        if entry is None or not entry[0].alive:
            return ToolResult.failed(f"the tool {call.name!r} is not reachable right now")
        arguments = call.parsed_arguments()
        if arguments is None:
            return ToolResult.failed(f"the arguments are not a JSON object: {call.arguments[:120]!r}")
        link = entry[0]
        self.calls += 1
        timeout = self.config.call_timeout_s
        try:
            result = await asyncio.wait_for(link.client.call_tool(call.name, arguments), timeout=timeout)
        except asyncio.TimeoutError:
            return ToolResult.failed(f"no result within {timeout:g} s", ms())
        except Exception as exc:  # the error is the model's to read; a session that is gone is reopened later
            from mcp import MCPError
            from mcp_types import CONNECTION_CLOSED

            if not isinstance(exc, MCPError) or exc.code == CONNECTION_CLOSED:
                link.broken(f"the session ended ({type(exc).__name__}: {exc})"[:300])
                self._reindex()
            detail = exc.message if isinstance(exc, MCPError) else f"{type(exc).__name__}: {exc}"
            return ToolResult.failed(f"the MCP server {link.config.name} failed: {detail}"[:300], ms())
        text, cut = cut_to(result_text(result), self.config.max_result_chars)
        if result.is_error:
            return ToolResult(False, f"error: {text}", ms(), text or "the tool reported an error")
        return ToolResult(True, text, ms(), cut=cut)

    def describe(self) -> dict[str, Any]:
        """What the status reports; asking also retries, in the background, servers that are down and due
        (the router polls the status, so a server that failed to start comes back without a question)."""
        self.refresh()
        return {"servers": [{"name": link.config.name, "transport": link.transport, "alive": link.alive,
                             "error": link.error, "tools": [t.name for t in link.tools]} for link in self.links],
                "offered": sorted(self._index), "calls": self.calls}

    async def close(self) -> None:
        for task in list(self._reconnecting.values()):
            task.cancel()
        await asyncio.gather(*(link.close() for link in self.links), return_exceptions=True)
