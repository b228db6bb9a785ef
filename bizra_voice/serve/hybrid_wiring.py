"""Wires a ``HybridController`` (bizra_voice/hybrid.py) into one VoiceServer WebSocket session.

The controller gets Ray Serve handle calls as plain async callables: ``ModeRouter.decide_turn``,
``QwenKnowledge.answer`` (streamed) and ``Transcriber.transcribe``. The session's ``user.text`` client
events, decoded PCM and produced frames are routed to it; its events go out as 0x04 JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bizra_voice.hybrid import HybridController


def attach_hybrid(server: Any, session: Any, live: Any, params: Any) -> HybridController:
    requested = params.mode

    async def route(mode: str, text: str, previous_route: str | None) -> dict:
        if server.router is None:
            return {"type": "router.decision", "mode": "standalone", "requested": mode,
                    "reason": "this turn stays standalone: no router deployed"}
        return await server.router.decide_turn.remote(mode, text, previous_route)

    answer = None
    if server.qwen is not None:
        def answer(question: str, context: list, persona: str | None):
            return server.qwen.options(stream=True).answer.remote(question, context, persona)

    transcribe = None
    if server.transcriber is not None:
        async def transcribe(pcm: np.ndarray, sample_rate: int) -> dict:
            return await server.transcriber.transcribe.remote(pcm, sample_rate)

    controller = HybridController(
        live=live, emit=session.out.event, requested_mode=requested, tokenizer=server.runtime.tokenizer,
        route=route, answer=answer, transcribe=transcribe,
        persona=params.text_prompt or server.engine_config.default_persona,
        deadline_ms=server.config.router.deadline_ms, config=server.config.hybrid)
    session.on("user.text", controller.on_user_text)
    session.input_listeners.append(controller.on_input_pcm)
    session.output_listeners.append(controller.on_output)
    return controller
