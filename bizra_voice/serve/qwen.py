"""The knowledge deployment of hybrid mode: a thin Ray Serve shell around a backend and the MCP tools.

``knowledge.backend: local`` loads the model here with transformers (deployment ``QwenKnowledge``);
``openai`` streams from an OpenAI-compatible gateway (deployment ``GatewayKnowledge``, a CPU client). Either
way the interface is the same, so the ModeRouter and the VoiceServer do not care which:

- ``answer(question, context, persona, events=False)`` streams the answer text (``handle.options(stream=
  True)``); with ``events=True`` also the ``tool.call`` / ``tool.result`` events of its tool calls and, if it
  fails, a last ``knowledge.failed`` event with the reason (instead of an exception through Ray). A
  Realtime client's own functions come as ``client_tools`` (Chat Completions schemas) and ``tool_choice``;
  a call of one ends the stream with ``client_tool.calls`` (``knowledge/answer_loop.py``), and the answer
  goes on in a new ``answer(resume=<those messages + the outputs>)``;
- ``status()`` is what the ModeRouter reads: healthy (a gateway's probe state), load, recent first-token
  latency, the tools offered.

The MCP client lives here, one session per MCP server per replica (``knowledge/tools/mcp_toolbox.py``):
the model's tool calls come out of this replica's completions, so they are run where they arise, and a
stdio server is a child process of the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from bizra_voice.knowledge.answer_loop import answer_events
from bizra_voice.knowledge.config import KnowledgeConfig, ToolsConfig
from bizra_voice.knowledge.messages import question_messages
from bizra_voice.knowledge.tools.client_tools import with_client_tools

log = logging.getLogger("ray.serve")

LATENCY_FRESH_S = 60.0  # an older first-token latency no longer keeps turns standalone (the next one re-measures)


def _failure_reason(exc: BaseException) -> str:
    from bizra_voice.knowledge.gateway import describe

    try:
        return describe(exc)
    except Exception:
        return type(exc).__name__


@serve.deployment(name="QwenKnowledge")  # build_app names it after the backend
class KnowledgeModel:
    async def __init__(self, config: dict, tools: dict | None = None, model_dir: str | None = None) -> None:
        self.config = KnowledgeConfig.model_validate(config)
        self.tools_config = ToolsConfig.model_validate(tools or {})
        self.random_weights = self.config.local and self.config.tiny_random
        self._probes: asyncio.Task | None = None
        if self.config.local:
            self.model, self.device, self.model_name = self._load_local(model_dir)
        else:
            from bizra_voice.knowledge.gateway import GatewayModel

            api_env = self.config.api_key_env
            self.model = GatewayModel(self.config, os.environ.get(api_env) if api_env else None)
            self.device, self.model_name = "gateway", f"{self.config.model} at {self.config.base_url}"
            await self.model.probe()  # known before the first session asks
            self._probes = asyncio.create_task(self.model.run_probes())
        self.toolbox = None
        if self.tools_config.mcp and not self.tools_config.allow:
            log.warning("tools.mcp lists %d MCP servers but tools.allow is empty: no tool is offered",
                        len(self.tools_config.mcp))
        if self.tools_config.enabled:
            from bizra_voice.knowledge.tools.mcp_toolbox import McpToolbox

            self.toolbox = McpToolbox(self.tools_config)
            await self.toolbox.start()
        self._ongoing = 0
        self._answers = 0  # answer() calls so far (tests check that standalone sessions never call it)
        self._lock = threading.Lock()
        self._latency: tuple[float, float] | None = None  # (first-token ms, when) of the latest completion
        from bizra_voice.serve.metrics import latency_histogram

        self.first_token_hist = latency_histogram("bizra_qwen_first_token_ms", "Knowledge model: question (or "
                                                  "tool result) -> first piece of its completion (ms).")
        self.answer_hist = latency_histogram("bizra_qwen_answer_ms", "Knowledge model: question -> whole "
                                             "answer, tool calls included (ms).")
        log.info("%s ready: %s on %s%s", self.config.deployment_name, self.model_name, self.device,
                 " (tiny RANDOM weights: answers are gibberish)" if self.random_weights else "")

    def _load_local(self, model_dir: str | None) -> tuple[Any, str, str]:
        from bizra_voice.knowledge.local import LocalModel
        from bizra_voice.serve.cpu_share import yield_cpu_to_the_engine
        from bizra_voice.serve.model_cache import pick_device

        device = pick_device(self.config.device, self.config.gpu_memory_fraction)
        yield_cpu_to_the_engine(device, self.config.deployment_name)  # CPU: one thread, lower priority than the engine
        if self.config.tiny_random:
            from bizra_voice.serve.tiny_qwen import make_tiny_qwen

            # Generated on the replica's node (a shared cache dir makes it once per node), then reused.
            model_dir = str(make_tiny_qwen(model_dir or self.config.model))
        source = model_dir or self.config.model
        return LocalModel(self.config, source, device), device, source

    async def status(self) -> dict[str, Any]:
        gateway = not self.config.local
        latency = None
        if self._latency is not None and time.monotonic() - self._latency[1] <= LATENCY_FRESH_S:
            latency = self._latency[0]
        return {
            "enabled": True,
            "healthy": bool(self.model.healthy),
            "detail": self.model.health.detail if gateway else "",
            "ongoing": self._ongoing,
            "answers": self._answers,
            "capacity": self.config.max_ongoing_requests,
            "latency_ms": latency,
            "backend": self.config.backend,
            "model": self.model_name,
            "device": self.device,
            "random_weights": self.random_weights,
            "tools": self.toolbox.describe() if self.toolbox is not None else None,
        }

    async def _timed(self, messages: list[dict], tools: list[dict],
                     tool_choice: str | dict | None = None) -> AsyncIterator[Any]:
        """One completion of the backend, its first-token latency recorded (what the router's deadline reads)."""
        start = time.perf_counter()
        first = True
        async for item in self.model.stream(messages, tools, tool_choice if tools else None):
            if first:
                ms = (time.perf_counter() - start) * 1000.0
                self._latency = (ms, time.monotonic())
                self.first_token_hist.observe(ms)
                first = False
            yield item

    async def answer(self, question: str | None, context: list[dict] | None = None, persona: str | None = None,
                     events: bool = False, client_tools: list[dict] | None = None,
                     tool_choice: str | dict | None = None,
                     resume: list[dict] | None = None) -> AsyncIterator[str | dict]:
        """Stream the answer to ``question`` (or go on with the ``resume`` messages of a paused answer): text
        pieces (and, with ``events``, tool, client-call and failure events)."""
        messages = list(resume) if resume else question_messages(self.config.system_prompt, question or "",
                                                                   context, persona)
        toolset = with_client_tools(self.toolbox, client_tools)

        def model(msgs: list[dict], tools: list[dict]) -> AsyncIterator[Any]:
            return self._timed(msgs, tools, tool_choice)

        with self._lock:
            self._ongoing += 1
            self._answers += 1
        start = time.perf_counter()
        try:
            async for item in answer_events(model, messages, toolset, self.tools_config.max_calls_per_answer):
                if isinstance(item, dict):
                    if item["type"] == "tool.result":
                        log.info("tool %s: %s in %.0f ms%s", item["name"], "ok" if item["ok"] else "failed",
                                 item["ms"], "" if item["ok"] else f" ({item['error']})")
                    if events:
                        yield item
                    continue
                yield item
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not events:
                raise
            reason = _failure_reason(exc)
            log.warning("knowledge answer failed: %s", reason)
            yield {"type": "knowledge.failed", "reason": reason}
        finally:
            self.answer_hist.observe((time.perf_counter() - start) * 1000.0)
            with self._lock:
                self._ongoing -= 1

    async def __del__(self) -> None:
        if self._probes is not None:
            self._probes.cancel()
        if getattr(self, "toolbox", None) is not None:
            with contextlib.suppress(Exception):
                await self.toolbox.close()
        close = getattr(getattr(self, "model", None), "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
