"""A transparent wrapper of a ``LiveSession`` that feeds recording and metrics.

``/api/chat``'s ChatSession (and any other loop) calls ``push_pcm`` and ``next_output`` on the session it is
given; ``TappedLive`` forwards everything to the real session and, on the way, hands the user's PCM and
the assistant's frames (audio + text piece) to a ``SessionRecorder`` and reports the first output frame
(time to first audio). Every other attribute (``guide``, ``close``, ``session_id``, ...) is the real one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bizra_voice.recording import SessionRecorder


class TappedLive:
    def __init__(self, live: Any, recorder: SessionRecorder | None = None,
                 on_first_output: Callable[[], None] | None = None) -> None:
        self._live = live
        self._recorder = recorder
        self._on_first_output = on_first_output

    def __getattr__(self, name: str) -> Any:
        return getattr(self._live, name)

    @property
    def live(self) -> Any:
        return self._live

    def push_pcm(self, pcm: np.ndarray) -> None:
        self._live.push_pcm(pcm)
        if self._recorder is not None:
            self._recorder.user(pcm)

    async def next_output(self) -> Any:
        out = await self._live.next_output()
        if self._on_first_output is not None:
            callback, self._on_first_output = self._on_first_output, None
            callback()
        if self._recorder is not None:
            self._recorder.assistant(out.pcm)
            if out.text:
                self._recorder.event({"type": "assistant.text", "frame": int(out.frame), "text": out.text,
                                      "guided": bool(out.guided)})
        return out


def tap_outbox_events(outbox: Any, recorder: SessionRecorder) -> None:
    """Also log every JSON event ``outbox.event(...)`` sends (session.started, router and hybrid events)."""
    send_event = outbox.event

    async def event(payload: dict[str, Any]) -> None:
        recorder.event({"direction": "out", **payload})
        await send_event(payload)

    outbox.event = event
