"""Wires a ``HybridController`` (bizra_voice/hybrid.py) into a VoiceServer session.

The controller gets Ray Serve handle calls as plain async callables: ``ModeRouter.decide_turn``,
the knowledge deployment's ``answer`` (streamed, with its tool events: ``events=True``; the local
``QwenKnowledge`` or a ``GatewayKnowledge``) and ``Transcriber.transcribe``. On ``/api/chat`` the session's
``user.text`` client events, decoded PCM and produced frames are routed to it and its events go out as 0x04
JSON; ``/v1/realtime`` (serve/realtime_engine.py) builds one with ``hybrid_controller`` and maps its events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from bizra_voice.hybrid import HybridController


def hybrid_controller(server: Any, live: Any, requested_mode: str, persona: str | None,
                      emit: Callable[[dict], Awaitable[None]], *, detect_turns: bool = True) -> HybridController:
    """A controller for one session of ``server`` (the VoiceServer: router, qwen, transcriber handles)."""

    async def route(mode: str, text: str, previous_route: str | None, typed: bool = False) -> dict:
        if server.router is None:
            return {"type": "router.decision", "mode": "standalone", "requested": mode,
                    "reason": "this turn stays standalone: no router deployed"}
        return await server.router.decide_turn.remote(mode, text, previous_route, typed)

    answer = None
    if server.qwen is not None:
        def answer(question: str | None, context: list, persona: str | None, **options: Any):
            return server.qwen.options(stream=True).answer.remote(question, context, persona, events=True,
                                                                  **options)

    transcribe = None
    if server.transcriber is not None:
        async def transcribe(pcm: np.ndarray, sample_rate: int) -> dict:
            return await server.transcriber.transcribe.remote(pcm, sample_rate)

    return HybridController(
        live=live, emit=emit, requested_mode=requested_mode, tokenizer=server.runtime.tokenizer,
        route=route, answer=answer, transcribe=transcribe,
        persona=persona or server.engine_config.default_persona,
        deadline_ms=server.config.router.deadline_ms, config=server.config.hybrid, detect_turns=detect_turns,
        knowledge_label=server.config.knowledge.label, tool_timeout_s=server.config.tools.call_timeout_s)


def attach_hybrid(server: Any, session: Any, live: Any, params: Any) -> HybridController:
    """The ``/api/chat`` wiring: ``user.text`` events, decoded user PCM and every produced frame."""
    controller = hybrid_controller(server, live, params.mode, params.text_prompt, session.out.event)
    session.on("user.text", controller.on_user_text)
    session.input_listeners.append(controller.on_input_pcm)
    session.output_listeners.append(controller.on_output)
    return controller
