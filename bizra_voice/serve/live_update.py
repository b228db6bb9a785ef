"""Live persona and voice changes on ``/api/chat``: a client's ``session.update`` event (0x04).

``{"type": "session.update", "text_prompt": …, "voice_prompt": …}`` (either or both) re-anchors the session's
slot on the new persona and/or voice plus the recent conversation (``LiveSession.update_prompt``; the audio
streams keep running). Answered by ``session.updated`` (what changed, the re-prefill time) or
``session.update.rejected`` (the reason; the session keeps its old persona and voice). The change runs in
its own task so the receive loop keeps reading the user's audio meanwhile. The answers go to the client
even without ``events=1``: it asked, in our dialect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from bizra_voice import protocol as P
from bizra_voice.engine.api import EngineError
from bizra_voice.hybrid import MAX_PERSONA_CHARS
from bizra_voice.serve.endings import ClientGone
from bizra_voice.session_params import BadParams, SessionParams

log = logging.getLogger("ray.serve")

UPDATE_EVENT = "session.update"


def validated_update(event: dict[str, Any]) -> tuple[str | None, str | None]:
    """(text_prompt, voice) of a ``session.update`` event, validated like the query parameters.

    ``text_prompt: ""`` means the server's default persona; a missing key leaves that part unchanged.
    Raises ``BadParams`` with one sentence.
    """
    unknown = sorted(set(event) - {"type", "text_prompt", "voice_prompt", "event_id"})
    if unknown:
        raise BadParams(f"session.update takes text_prompt and/or voice_prompt, not {', '.join(unknown)}.")
    text, voice = event.get("text_prompt"), event.get("voice_prompt")
    if text is None and voice is None:
        raise BadParams("session.update needs text_prompt and/or voice_prompt.")
    for name, value in (("text_prompt", text), ("voice_prompt", voice)):
        if value is not None and not isinstance(value, str):
            raise BadParams(f"session.update {name} must be a string.")
    params = SessionParams.from_query({k: v for k, v in (("text_prompt", text), ("voice_prompt", voice))
                                       if v is not None})
    new_text = None if text is None else (params.text_prompt or "")
    new_voice = None if voice is None else params.voice_prompt
    if voice is not None and new_voice is None:
        raise BadParams("session.update voice_prompt must name a voice, such as NATF2.")
    return new_text, new_voice


class LiveUpdates:
    """Handles one ``/api/chat`` session's ``session.update`` events (one change at a time, in order)."""

    def __init__(self, outbox: Any, live: Any, hybrid: Any = None, default_persona: str = "",
                 recorder: Any = None) -> None:
        self.out = outbox
        self.live = live
        self.hybrid = hybrid
        self.default_persona = default_persona
        self.recorder = recorder  # the consent recording's events.jsonl gets every change too
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    async def on_event(self, _session: Any, event: dict[str, Any]) -> None:
        task = asyncio.create_task(self._apply(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reply(self, event: dict[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder.event({"direction": "out", **event})
        with contextlib.suppress(ClientGone):  # the client left meanwhile
            await self.out.send(P.metadata(event))

    async def _apply(self, event: dict[str, Any]) -> None:
        request_id = event.get("event_id")
        try:
            text, voice = validated_update(event)
            async with self._lock:
                result = await self.live.update_prompt(text, voice)
        except (BadParams, EngineError) as exc:
            reason = str(exc).replace("Invalid query parameter", "Invalid session.update field")
            await self._reply({"type": "session.update.rejected", "reason": reason, "event_id": request_id})
            return
        if text is not None and self.hybrid is not None:  # Qwen answers in the new persona's name too
            self.hybrid.persona = (text or self.default_persona)[:MAX_PERSONA_CHARS] or None
        log.info("session %s: live %s change in %.1f ms", self.live.session_id, " and ".join(result["changed"]),
                 result["prefill_ms"])
        await self._reply({"type": "session.updated", "event_id": request_id, **result})

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
