"""The ``openai`` knowledge backend: any OpenAI-compatible ``/v1/chat/completions`` endpoint, streamed.

vLLM, Ollama, llama.cpp's server, TGI, ``transformers serve`` or a company gateway: whatever speaks the
Chat Completions API. The official ``openai`` client (``AsyncOpenAI``, retries off: a turn has no time for
them) streams the answer; text deltas are passed on as they arrive, and tool-call deltas are put together
by their ``index`` and handed over as ``ToolCall``s when the completion ends.

Bounds, all from ``knowledge:``: ``connect_timeout_s`` (TCP/TLS), ``first_token_timeout_s`` (the response
and its first chunk), ``answer_timeout_s`` (the whole completion). Every failure is told to the health
state (``gateway_health.py``) so the router sends the next turns standalone, with the reason, while the
gateway is down; the probe (``probe``) finds it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from bizra_voice.knowledge.config import KnowledgeConfig
from bizra_voice.knowledge.gateway_health import GatewayHealth
from bizra_voice.knowledge.tools.calls import ToolCall

log = logging.getLogger("ray.serve")


class GatewayError(RuntimeError):
    """A completion that failed; ``str()`` is the reason the client is told."""


def describe(exc: BaseException) -> str:
    """A short reason for a client event: what went wrong talking to the gateway."""
    import openai

    if isinstance(exc, GatewayError):
        return str(exc)
    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return f"unreachable ({type(cause).__name__ if cause is not None else type(exc).__name__})"
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code in (401, 403):
            return f"refused the API key (HTTP {exc.status_code})"
        return f"answered HTTP {exc.status_code}"
    return type(exc).__name__


class GatewayModel:
    """``stream(messages, tools)`` -> text pieces, then the completion's ``ToolCall``s; ``probe()``; health."""

    def __init__(self, config: KnowledgeConfig, api_key: str | None,
                 clock: Any = time.monotonic) -> None:
        from openai import AsyncOpenAI, Timeout

        self.config = config
        self.clock = clock
        timeout = Timeout(config.answer_timeout_s, connect=config.connect_timeout_s)
        self.client = AsyncOpenAI(base_url=config.base_url, api_key=api_key or "none", max_retries=0, timeout=timeout)
        # The probe has its own connections: a server that closes its connection after an error answer
        # (transformers serve does, after its /v1/models 500) must not leave a dead one for the next turn.
        self.probe_client = AsyncOpenAI(base_url=config.base_url, api_key=api_key or "none", max_retries=0,
                                        timeout=timeout)
        self.health = GatewayHealth(config.probe_interval_s, config.probe_backoff_max_s, clock=clock)

    @property
    def healthy(self) -> bool:
        return self.health.up

    def _request(self, messages: list[dict], tools: list[dict], max_tokens: int,
                 tool_choice: str | dict | None = None) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.config.model, "messages": messages, "stream": True,
                                   "max_tokens": max_tokens}
        if tools:
            request["tools"] = tools
            if tool_choice is not None:
                request["tool_choice"] = tool_choice
        if self.config.temperature is not None:
            request["temperature"] = self.config.temperature
        return request

    async def stream(self, messages: list[dict], tools: list[dict],
                     tool_choice: str | dict | None = None) -> AsyncIterator[str | ToolCall]:
        """One completion (``tool_choice`` in Chat Completions' form, sent with the tools). Raises
        ``GatewayError`` (reason in the text) when it fails or outlives a bound."""
        cfg = self.config
        started = self.clock()
        try:
            response = await asyncio.wait_for(
                self.client.chat.completions.create(**self._request(messages, tools, cfg.max_new_tokens,
                                                                   tool_choice)),
                timeout=cfg.first_token_timeout_s)
        except asyncio.TimeoutError:
            self.health.failed(f"no response within {cfg.first_token_timeout_s:g} s")
            raise GatewayError(self.health.detail) from None
        except Exception as exc:
            self._failed(exc)
            raise GatewayError(describe(exc)) from exc
        calls: dict[int, dict[str, str]] = {}
        iterator = response.__aiter__()
        first = True
        try:
            while True:
                if first:
                    bound = started + cfg.first_token_timeout_s
                    what = f"no first token within {cfg.first_token_timeout_s:g} s"
                else:
                    bound = started + cfg.answer_timeout_s
                    what = f"still answering after {cfg.answer_timeout_s:g} s"
                try:
                    chunk = await asyncio.wait_for(iterator.__anext__(), timeout=max(0.001, bound - self.clock()))
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    raise GatewayError(what) from None
                first = False
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    if delta is None:
                        continue
                    if delta.content:
                        yield delta.content
                    for part in delta.tool_calls or []:
                        call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                        call["id"] = part.id or call["id"]
                        if part.function is not None:
                            call["name"] += part.function.name or ""
                            call["arguments"] += part.function.arguments or ""
        except GatewayError:
            raise
        except Exception as exc:
            self._failed(exc)
            raise GatewayError(describe(exc)) from exc
        finally:
            await response.close()
        self.health.answered()
        for index in sorted(calls):
            call = calls[index]
            yield ToolCall(call["id"] or f"call_{index + 1}", call["name"], call["arguments"])

    def _failed(self, exc: BaseException) -> None:
        """A failure that says the gateway is down (unreachable, 5xx, refused key) -> the health state."""
        import openai

        if isinstance(exc, (openai.APIConnectionError, asyncio.TimeoutError)) or (
                isinstance(exc, openai.APIStatusError) and (exc.status_code >= 500 or exc.status_code in (401, 403))):
            self.health.failed(describe(exc))

    async def probe(self) -> None:
        """``GET /v1/models``; where that is not usable (an HTTP error), a one-token completion decides,
        unless one has succeeded since the last failure (then an HTTP answer at all proves it is there)."""
        import openai

        bound = self.config.connect_timeout_s + self.config.first_token_timeout_s
        try:
            await asyncio.wait_for(self.probe_client.models.list(), timeout=bound)
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                self.health.failed(describe(exc))
            elif self.health.verified:
                self.health.listed()
            else:
                await self._probe_completion(bound)
            return
        except Exception as exc:
            self.health.failed(describe(exc) if not isinstance(exc, asyncio.TimeoutError) else "timed out")
            return
        self.health.listed()

    async def _probe_completion(self, bound: float) -> None:
        """One token. A connection the error answer just closed is tried once more on a new one."""
        import openai

        for attempt in (1, 2):
            try:
                await asyncio.wait_for(self.probe_client.chat.completions.create(
                    model=self.config.model, messages=[{"role": "user", "content": "ping"}], max_tokens=1),
                    timeout=bound)
            except openai.APIConnectionError as exc:
                if attempt == 1 and not isinstance(exc, openai.APITimeoutError):
                    continue
                self.health.failed(describe(exc))
                return
            except Exception as exc:
                self.health.failed(describe(exc) if not isinstance(exc, asyncio.TimeoutError) else "timed out")
                return
            self.health.answered()
            return

    async def run_probes(self) -> None:
        """Probe for ever (a task of the replica): every ``probe_interval_s`` while up, backing off while down."""
        was_up: bool | None = None
        while True:
            await asyncio.sleep(self.health.wait_s())
            try:
                await self.probe()
            except Exception as exc:  # a probe must never end the loop
                self.health.failed(type(exc).__name__)
            if self.health.up != was_up:
                if self.health.up:
                    log.info("knowledge gateway %s is up (model %s)", self.config.base_url, self.config.model)
                else:
                    log.warning("knowledge gateway %s is down: %s; next probe in %.0f s", self.config.base_url,
                                self.health.detail, self.health.wait_s())
                was_up = self.health.up

    async def close(self) -> None:
        await self.client.close()
        await self.probe_client.close()
